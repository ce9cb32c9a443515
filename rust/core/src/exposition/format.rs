//! The two text formats and the choice between them from a scrape's
//! `Accept` header.

/// Exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus004,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics100,
}

/// The format to answer a scrape with: OpenMetrics when the `Accept` header
/// asks for `application/openmetrics-text` (any version, any positive or
/// absent `q`), else Prometheus 0.0.4.
pub fn negotiate(accept_header: &str) -> Format {
    for range in accept_header.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/openmetrics-text") {
            continue;
        }
        let refused = params.any(|p| match p.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("q") => {
                v.trim().parse::<f64>().is_ok_and(|q| q <= 0.0)
            }
            _ => false,
        });
        if !refused {
            return Format::OpenMetrics100;
        }
    }
    Format::Prometheus004
}

/// The `Content-Type` of a response in format `f`.
pub fn content_type(f: Format) -> &'static str {
    match f {
        Format::Prometheus004 => "text/plain; version=0.0.4; charset=utf-8",
        Format::OpenMetrics100 => "application/openmetrics-text; version=1.0.0; charset=utf-8",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_picks_openmetrics_only_when_asked() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(prometheus), Format::OpenMetrics100);
        assert_eq!(
            negotiate("application/openmetrics-text"),
            Format::OpenMetrics100
        );
        assert_eq!(
            negotiate("Application/OpenMetrics-Text; version=0.0.1"),
            Format::OpenMetrics100
        );
        assert_eq!(
            negotiate("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.1"),
            Format::OpenMetrics100
        );
        assert_eq!(negotiate("text/plain;version=0.0.4"), Format::Prometheus004);
        assert_eq!(negotiate(""), Format::Prometheus004);
        assert_eq!(negotiate("*/*"), Format::Prometheus004);
        assert_eq!(
            negotiate("application/openmetrics-text;q=0"),
            Format::Prometheus004
        );
        assert_eq!(
            negotiate("application/openmetrics-textual"),
            Format::Prometheus004
        );
        assert_eq!(negotiate("é;q=é,,;;="), Format::Prometheus004);
        assert_eq!(
            content_type(Format::Prometheus004),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            content_type(Format::OpenMetrics100),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }
}
