//! The whole output of one registry in both formats, line for line.

use super::*;

pub(super) fn golden_setup() -> (Registry, ExpositionConfig, Vec<ExtraFamily>) {
    let r = Registry::new(HistogramConfig::default(), 100);
    r.record(
        SpanKind::Server,
        "GET /users/{id}",
        StatusClass::Http2xx,
        3_000_000,
    );
    r.record(
        SpanKind::Server,
        "GET /users/{id}",
        StatusClass::Http2xx,
        40_000_000,
    );
    r.record(
        SpanKind::Server,
        "GET /users/{id}",
        StatusClass::Http5xx,
        2_000_000_000,
    );
    r.record(
        SpanKind::Consumer,
        "orders process",
        StatusClass::Error,
        250_000,
    );
    // One name, two systems (HTTP and Redis): two families. A queue's
    // producer and consumer.
    let http = attrs(&[
        ("http.request.method", "GET"),
        ("server.address", "api.example.com"),
    ]);
    let redis = attrs(&[("db.system.name", "redis"), ("db.operation.name", "GET")]);
    let queue = |op| {
        attrs(&[
            ("messaging.system", "kafka"),
            ("messaging.operation.name", op),
            ("messaging.destination.name", "orders"),
        ])
    };
    let (send, process) = (queue("send"), queue("process"));
    let client = SpanKind::Client;
    for (kind, name, attrs, class, ns) in [
        (client, "GET", &http, StatusClass::Http2xx, 5_000_000),
        (client, "GET", &http, StatusClass::Error, 400_000_000),
        (client, "GET", &redis, StatusClass::Ok, 200_000),
        (
            SpanKind::Producer,
            "send orders",
            &send,
            StatusClass::Ok,
            300_000,
        ),
        (
            SpanKind::Consumer,
            "process orders",
            &process,
            StatusClass::Ok,
            7_000_000,
        ),
    ] {
        r.record_target(kind, name, TargetRef::of(kind, attrs), class, ns);
    }
    let cfg = ExpositionConfig {
        buckets_s: vec![0.1, 0.01],
        quantiles: vec![0.5],
        namespace: "pt".into(),
        const_labels: vec![("service.name".into(), "api".into())],
    };
    let extra = vec![ExtraFamily {
        name: "process_open_fds".into(),
        help: "Open \"file\" descriptors.".into(),
        kind: ExtraKind::Gauge,
        samples: vec![(vec![], 12.0)],
    }];
    (r, cfg, extra)
}

pub(super) fn golden_exemplars(e: &Entry) -> Vec<Option<Exemplar>> {
    match (e.kind, &*e.name, e.target.system(), e.class) {
        (SpanKind::Server, "GET /users/{id}", _, StatusClass::Http2xx) => {
            vec![None, Some(ex(40_000_000, 1_700_000_000_123_000_000))]
        }
        (SpanKind::Client, "GET", System::Http, StatusClass::Http2xx) => {
            vec![Some(ex(5_000_000, 1_700_000_000_456_000_000))]
        }
        _ => Vec::new(),
    }
}

pub(super) const GOLDEN_004: &str = r#"# HELP db_client_errors_total Database operations that ended in an error by operation, database system, operation name and collection.
# TYPE db_client_errors_total counter
db_client_errors_total{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api"} 0
# HELP db_client_operation_duration_quantile_seconds Quantiles (label q) of db_client_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE db_client_operation_duration_quantile_seconds gauge
db_client_operation_duration_quantile_seconds{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api",q="0.5"} 0.0002
# HELP db_client_operation_duration_seconds Duration of database operations (CLIENT spans with db.system.name) by operation, database system, operation name, collection and status class.
# TYPE db_client_operation_duration_seconds histogram
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="0.01"} 1
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="0.1"} 1
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="+Inf"} 1
db_client_operation_duration_seconds_sum{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api"} 0.0002
db_client_operation_duration_seconds_count{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api"} 1
# HELP db_client_operations_total Database operations by operation, database system, operation name and collection.
# TYPE db_client_operations_total counter
db_client_operations_total{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api"} 1
# HELP http_client_errors_total Outgoing HTTP requests that ended in an error class (5xx or error status) by operation, method and server address.
# TYPE http_client_errors_total counter
http_client_errors_total{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api"} 1
# HELP http_client_request_duration_quantile_seconds Quantiles (label q) of http_client_request_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE http_client_request_duration_quantile_seconds gauge
http_client_request_duration_quantile_seconds{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api",q="0.5"} 0.005013503
# HELP http_client_request_duration_seconds Duration of outgoing HTTP requests (CLIENT spans with http.request.method) by operation, method, server address and status class.
# TYPE http_client_request_duration_seconds histogram
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="0.01"} 1
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="0.1"} 1
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="+Inf"} 1
http_client_request_duration_seconds_sum{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api"} 0.005
http_client_request_duration_seconds_count{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api"} 1
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="0.01"} 0
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="0.1"} 0
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="+Inf"} 1
http_client_request_duration_seconds_sum{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api"} 0.4
http_client_request_duration_seconds_count{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api"} 1
# HELP http_client_requests_total Outgoing HTTP requests by operation, method and server address.
# TYPE http_client_requests_total counter
http_client_requests_total{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api"} 2
# HELP http_server_errors_total HTTP server requests that ended in an error class (5xx or error status) by operation.
# TYPE http_server_errors_total counter
http_server_errors_total{operation="GET /users/{id}",service_name="api"} 1
# HELP http_server_request_duration_quantile_seconds Quantiles (label q) of http_server_request_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE http_server_request_duration_quantile_seconds gauge
http_server_request_duration_quantile_seconds{operation="GET /users/{id}",service_name="api",q="0.5"} 0.040108031
# HELP http_server_request_duration_seconds Duration of HTTP server requests (SERVER spans) by operation (method and route) and status class.
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="0.01"} 1
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="0.1"} 2
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="+Inf"} 2
http_server_request_duration_seconds_sum{operation="GET /users/{id}",status_class="2xx",service_name="api"} 0.043
http_server_request_duration_seconds_count{operation="GET /users/{id}",status_class="2xx",service_name="api"} 2
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="0.01"} 0
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="0.1"} 0
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="+Inf"} 1
http_server_request_duration_seconds_sum{operation="GET /users/{id}",status_class="5xx",service_name="api"} 2
http_server_request_duration_seconds_count{operation="GET /users/{id}",status_class="5xx",service_name="api"} 1
# HELP http_server_requests_total HTTP server requests (SERVER spans) by operation.
# TYPE http_server_requests_total counter
http_server_requests_total{operation="GET /users/{id}",service_name="api"} 3
# HELP messaging_client_errors_total Messaging operations a client initiates that ended in an error by operation, messaging system, operation name and destination.
# TYPE messaging_client_errors_total counter
messaging_client_errors_total{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api"} 0
# HELP messaging_client_operation_duration_quantile_seconds Quantiles (label q) of messaging_client_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE messaging_client_operation_duration_quantile_seconds gauge
messaging_client_operation_duration_quantile_seconds{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api",q="0.5"} 0.0003
# HELP messaging_client_operation_duration_seconds Duration of messaging operations a client initiates (PRODUCER or CLIENT spans with messaging.system) by operation, messaging system, operation name, destination and status class.
# TYPE messaging_client_operation_duration_seconds histogram
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.01"} 1
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.1"} 1
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="+Inf"} 1
messaging_client_operation_duration_seconds_sum{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api"} 0.0003
messaging_client_operation_duration_seconds_count{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api"} 1
# HELP messaging_client_operations_total Messaging operations a client initiates by operation, messaging system, operation name and destination.
# TYPE messaging_client_operations_total counter
messaging_client_operations_total{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api"} 1
# HELP messaging_process_duration_quantile_seconds Quantiles (label q) of messaging_process_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE messaging_process_duration_quantile_seconds gauge
messaging_process_duration_quantile_seconds{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api",q="0.5"} 0.007
# HELP messaging_process_duration_seconds Duration of message processing (CONSUMER spans with messaging.system) by operation, messaging system, operation name, destination and status class.
# TYPE messaging_process_duration_seconds histogram
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.01"} 1
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.1"} 1
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="+Inf"} 1
messaging_process_duration_seconds_sum{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api"} 0.007
messaging_process_duration_seconds_count{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api"} 1
# HELP messaging_process_errors_total Message processing operations that ended in an error by operation, messaging system, operation name and destination.
# TYPE messaging_process_errors_total counter
messaging_process_errors_total{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api"} 0
# HELP messaging_process_operations_total Message processing operations by operation, messaging system, operation name and destination.
# TYPE messaging_process_operations_total counter
messaging_process_operations_total{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api"} 1
# HELP process_open_fds Open "file" descriptors.
# TYPE process_open_fds gauge
process_open_fds{service_name="api"} 12
# HELP pt_messaging_errors_total Messaging operations (PRODUCER and CONSUMER spans without messaging.system) that ended in an error by operation and kind.
# TYPE pt_messaging_errors_total counter
pt_messaging_errors_total{operation="orders process",kind="consumer",service_name="api"} 1
# HELP pt_messaging_operation_duration_quantile_seconds Quantiles (label q) of pt_messaging_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE pt_messaging_operation_duration_quantile_seconds gauge
pt_messaging_operation_duration_quantile_seconds{operation="orders process",kind="consumer",service_name="api",q="0.5"} 0.00025
# HELP pt_messaging_operation_duration_seconds Duration of messaging operations (PRODUCER and CONSUMER spans without messaging.system) by operation, kind and status class.
# TYPE pt_messaging_operation_duration_seconds histogram
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="0.01"} 1
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="0.1"} 1
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="+Inf"} 1
pt_messaging_operation_duration_seconds_sum{operation="orders process",kind="consumer",status_class="error",service_name="api"} 0.00025
pt_messaging_operation_duration_seconds_count{operation="orders process",kind="consumer",status_class="error",service_name="api"} 1
# HELP pt_messaging_operations_total Messaging operations (PRODUCER and CONSUMER spans without messaging.system) by operation and kind.
# TYPE pt_messaging_operations_total counter
pt_messaging_operations_total{operation="orders process",kind="consumer",service_name="api"} 1
"#;

pub(super) const GOLDEN_OPENMETRICS: &str = r#"# HELP db_client_errors Database operations that ended in an error by operation, database system, operation name and collection.
# TYPE db_client_errors counter
db_client_errors_total{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api"} 0
# HELP db_client_operation_duration_quantile_seconds Quantiles (label q) of db_client_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE db_client_operation_duration_quantile_seconds gauge
# UNIT db_client_operation_duration_quantile_seconds seconds
db_client_operation_duration_quantile_seconds{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api",q="0.5"} 0.0002
# HELP db_client_operation_duration_seconds Duration of database operations (CLIENT spans with db.system.name) by operation, database system, operation name, collection and status class.
# TYPE db_client_operation_duration_seconds histogram
# UNIT db_client_operation_duration_seconds seconds
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="0.01"} 1
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="0.1"} 1
db_client_operation_duration_seconds_bucket{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api",le="+Inf"} 1
db_client_operation_duration_seconds_sum{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api"} 0.0002
db_client_operation_duration_seconds_count{operation="GET",db_system_name="redis",db_operation_name="GET",status_class="ok",service_name="api"} 1
# HELP db_client_operations Database operations by operation, database system, operation name and collection.
# TYPE db_client_operations counter
db_client_operations_total{operation="GET",db_system_name="redis",db_operation_name="GET",service_name="api"} 1
# HELP http_client_errors Outgoing HTTP requests that ended in an error class (5xx or error status) by operation, method and server address.
# TYPE http_client_errors counter
http_client_errors_total{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api"} 1
# HELP http_client_request_duration_quantile_seconds Quantiles (label q) of http_client_request_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE http_client_request_duration_quantile_seconds gauge
# UNIT http_client_request_duration_quantile_seconds seconds
http_client_request_duration_quantile_seconds{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api",q="0.5"} 0.005013503
# HELP http_client_request_duration_seconds Duration of outgoing HTTP requests (CLIENT spans with http.request.method) by operation, method, server address and status class.
# TYPE http_client_request_duration_seconds histogram
# UNIT http_client_request_duration_seconds seconds
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="0.01"} 1 # {trace_id="0af7651916cd43dd8448eb211c80319c",span_id="b7ad6b7169203331"} 0.005 1700000000.456
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="0.1"} 1
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api",le="+Inf"} 1
http_client_request_duration_seconds_sum{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api"} 0.005
http_client_request_duration_seconds_count{operation="GET",http_request_method="GET",server_address="api.example.com",http_response_status_code="2xx",status_class="2xx",service_name="api"} 1
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="0.01"} 0
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="0.1"} 0
http_client_request_duration_seconds_bucket{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api",le="+Inf"} 1
http_client_request_duration_seconds_sum{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api"} 0.4
http_client_request_duration_seconds_count{operation="GET",http_request_method="GET",server_address="api.example.com",status_class="error",service_name="api"} 1
# HELP http_client_requests Outgoing HTTP requests by operation, method and server address.
# TYPE http_client_requests counter
http_client_requests_total{operation="GET",http_request_method="GET",server_address="api.example.com",service_name="api"} 2
# HELP http_server_errors HTTP server requests that ended in an error class (5xx or error status) by operation.
# TYPE http_server_errors counter
http_server_errors_total{operation="GET /users/{id}",service_name="api"} 1
# HELP http_server_request_duration_quantile_seconds Quantiles (label q) of http_server_request_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE http_server_request_duration_quantile_seconds gauge
# UNIT http_server_request_duration_quantile_seconds seconds
http_server_request_duration_quantile_seconds{operation="GET /users/{id}",service_name="api",q="0.5"} 0.040108031
# HELP http_server_request_duration_seconds Duration of HTTP server requests (SERVER spans) by operation (method and route) and status class.
# TYPE http_server_request_duration_seconds histogram
# UNIT http_server_request_duration_seconds seconds
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="0.01"} 1
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="0.1"} 2 # {trace_id="0af7651916cd43dd8448eb211c80319c",span_id="b7ad6b7169203331"} 0.04 1700000000.123
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="2xx",service_name="api",le="+Inf"} 2
http_server_request_duration_seconds_sum{operation="GET /users/{id}",status_class="2xx",service_name="api"} 0.043
http_server_request_duration_seconds_count{operation="GET /users/{id}",status_class="2xx",service_name="api"} 2
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="0.01"} 0
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="0.1"} 0
http_server_request_duration_seconds_bucket{operation="GET /users/{id}",status_class="5xx",service_name="api",le="+Inf"} 1
http_server_request_duration_seconds_sum{operation="GET /users/{id}",status_class="5xx",service_name="api"} 2
http_server_request_duration_seconds_count{operation="GET /users/{id}",status_class="5xx",service_name="api"} 1
# HELP http_server_requests HTTP server requests (SERVER spans) by operation.
# TYPE http_server_requests counter
http_server_requests_total{operation="GET /users/{id}",service_name="api"} 3
# HELP messaging_client_errors Messaging operations a client initiates that ended in an error by operation, messaging system, operation name and destination.
# TYPE messaging_client_errors counter
messaging_client_errors_total{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api"} 0
# HELP messaging_client_operation_duration_quantile_seconds Quantiles (label q) of messaging_client_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE messaging_client_operation_duration_quantile_seconds gauge
# UNIT messaging_client_operation_duration_quantile_seconds seconds
messaging_client_operation_duration_quantile_seconds{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api",q="0.5"} 0.0003
# HELP messaging_client_operation_duration_seconds Duration of messaging operations a client initiates (PRODUCER or CLIENT spans with messaging.system) by operation, messaging system, operation name, destination and status class.
# TYPE messaging_client_operation_duration_seconds histogram
# UNIT messaging_client_operation_duration_seconds seconds
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.01"} 1
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.1"} 1
messaging_client_operation_duration_seconds_bucket{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api",le="+Inf"} 1
messaging_client_operation_duration_seconds_sum{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api"} 0.0003
messaging_client_operation_duration_seconds_count{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",status_class="ok",service_name="api"} 1
# HELP messaging_client_operations Messaging operations a client initiates by operation, messaging system, operation name and destination.
# TYPE messaging_client_operations counter
messaging_client_operations_total{operation="send orders",messaging_system="kafka",messaging_operation_name="send",messaging_destination_name="orders",service_name="api"} 1
# HELP messaging_process_duration_quantile_seconds Quantiles (label q) of messaging_process_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE messaging_process_duration_quantile_seconds gauge
# UNIT messaging_process_duration_quantile_seconds seconds
messaging_process_duration_quantile_seconds{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api",q="0.5"} 0.007
# HELP messaging_process_duration_seconds Duration of message processing (CONSUMER spans with messaging.system) by operation, messaging system, operation name, destination and status class.
# TYPE messaging_process_duration_seconds histogram
# UNIT messaging_process_duration_seconds seconds
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.01"} 1
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="0.1"} 1
messaging_process_duration_seconds_bucket{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api",le="+Inf"} 1
messaging_process_duration_seconds_sum{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api"} 0.007
messaging_process_duration_seconds_count{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",status_class="ok",service_name="api"} 1
# HELP messaging_process_errors Message processing operations that ended in an error by operation, messaging system, operation name and destination.
# TYPE messaging_process_errors counter
messaging_process_errors_total{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api"} 0
# HELP messaging_process_operations Message processing operations by operation, messaging system, operation name and destination.
# TYPE messaging_process_operations counter
messaging_process_operations_total{operation="process orders",messaging_system="kafka",messaging_operation_name="process",messaging_destination_name="orders",service_name="api"} 1
# HELP process_open_fds Open \"file\" descriptors.
# TYPE process_open_fds gauge
process_open_fds{service_name="api"} 12
# HELP pt_messaging_errors Messaging operations (PRODUCER and CONSUMER spans without messaging.system) that ended in an error by operation and kind.
# TYPE pt_messaging_errors counter
pt_messaging_errors_total{operation="orders process",kind="consumer",service_name="api"} 1
# HELP pt_messaging_operation_duration_quantile_seconds Quantiles (label q) of pt_messaging_operation_duration_seconds per operation over all status classes, exact from the HDR histogram.
# TYPE pt_messaging_operation_duration_quantile_seconds gauge
# UNIT pt_messaging_operation_duration_quantile_seconds seconds
pt_messaging_operation_duration_quantile_seconds{operation="orders process",kind="consumer",service_name="api",q="0.5"} 0.00025
# HELP pt_messaging_operation_duration_seconds Duration of messaging operations (PRODUCER and CONSUMER spans without messaging.system) by operation, kind and status class.
# TYPE pt_messaging_operation_duration_seconds histogram
# UNIT pt_messaging_operation_duration_seconds seconds
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="0.01"} 1
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="0.1"} 1
pt_messaging_operation_duration_seconds_bucket{operation="orders process",kind="consumer",status_class="error",service_name="api",le="+Inf"} 1
pt_messaging_operation_duration_seconds_sum{operation="orders process",kind="consumer",status_class="error",service_name="api"} 0.00025
pt_messaging_operation_duration_seconds_count{operation="orders process",kind="consumer",status_class="error",service_name="api"} 1
# HELP pt_messaging_operations Messaging operations (PRODUCER and CONSUMER spans without messaging.system) by operation and kind.
# TYPE pt_messaging_operations counter
pt_messaging_operations_total{operation="orders process",kind="consumer",service_name="api"} 1
# EOF
"#;

#[test]
pub(super) fn golden_prometheus_004() {
    let (r, cfg, extra) = golden_setup();
    let out = text(&r, &golden_exemplars, &extra, &cfg, Format::Prometheus004);
    assert_eq!(out, GOLDEN_004);
}

#[test]
pub(super) fn golden_openmetrics() {
    let (r, cfg, extra) = golden_setup();
    let out = text(&r, &golden_exemplars, &extra, &cfg, Format::OpenMetrics100);
    assert_eq!(out, GOLDEN_OPENMETRICS);
}
