//! Vectorcall (`METH_FASTCALL`) entry points for the methods every span
//! calls: `Tracer.start_span`, `Span.__exit__`, `Span.set_attribute` and
//! `Span.end`, and for every WSGI request `wsgi_call`.
//!
//! The wheel is abi3 for CPython >= 3.9, and `METH_FASTCALL` entered the
//! limited API only in 3.10, so pyo3 gives these methods the tuple-and-dict
//! calling convention: for every call the interpreter builds an argument
//! tuple and a keyword dict, and pyo3 parses them back. On a span with
//! attributes that is about an eighth of its cost (valgrind's instruction
//! count, benchmarks/micro). Every CPython that loads this wheel implements
//! `METH_FASTCALL | METH_KEYWORDS` (since 3.7; 3.10 only declared it stable),
//! so these functions take the caller's argument vector as it is. They are
//! installed over pyo3's methods of the same name when the module is
//! initialised, call the same Rust code, and raise the same `TypeError`s
//! for bad arguments.
//!
//! # Measured (why the pyo3 internal stays)
//!
//! The functions below enter through pyo3's private
//! `impl_::trampoline::fastcall_with_keywords` (the GIL counted as held,
//! a Rust error raised as the exception), which ties the binding to the
//! exact pyo3 pinned in `rust/py/Cargo.toml` (`=0.25.1`, `abi3-py39`).
//! Instructions per span (`start_span`, 3 `set_attribute`, `end`) and per
//! Flask `/json` request, callgrind (`benchmarks/gate/run.py`), and CPU ns
//! per span from `benchmarks/micro/run.py --quick --rounds 11` (median of
//! 3 runs; wall times on this shared 2-core machine were too noisy to
//! quote), CPython 3.11. One callgrind run per row (a count moves by up to
//! 0.7% between runs), all built with `Bound::new` in place of
//! [`crate::newobj`]:
//!
//! | path                                                        | span  | flask_json | micro span | span / OTel SDK |
//! |-------------------------------------------------------------|-------|------------|------------|-----------------|
//! | these methods, pyo3's private trampoline (kept)             | 5,497 | 385,938    | 1,030-1,110 | 0.052-0.056    |
//! | these methods, a public trampoline (`Python::with_gil`, `catch_unwind`, `PyErr::restore`) | 5,800 | 385,295 | 1,051 | 0.052 |
//! | pyo3's `#[pymethods]` (tuple and dict under `abi3-py39`)     | 7,218 | 385,548    | 1,337      | 0.065           |
//! | pyo3's `#[pymethods]` built for `abi3-py310` (its own fastcall, this module removed) | 5,444 | 387,553 | 1,135 | 0.058 |
//!
//! The tuple-and-dict path costs 31% more per span: the fastcall entry
//! points stay. Against a public trampoline the private one saves 300
//! instructions per span (5.5%, too small for the timer to show here);
//! it stays because the span is at its budget (ratio target 0.05). The
//! Flask request does not move beyond its noise (about 0.5% between runs)
//! in any row: `wsgi_call` is one call per request. Building for
//! `abi3-py310` (CPython 3.9 is past its end of life) would let this module
//! go with no loss.
//!
//! GIL and locks: CPython calls these with the GIL held; they parse the
//! arguments and call the same functions as pyo3's methods, whose contracts
//! apply (`tracer`, `span`, `wsgi`), and take no lock of their own.

use std::ffi::{c_char, c_int};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString, PyTuple, PyType};

use crate::guard::guard;
use crate::span::Span;
use crate::tracer::Tracer;

/// CPython's flag values (`Include/methodobject.h`, unchanged since 3.7).
const METH_KEYWORDS: c_int = 0x0002;
const METH_FASTCALL: c_int = 0x0080;

type FastWithKeywords = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// A method definition that lives as long as the process (method
/// descriptors keep a pointer to it).
struct Def(ffi::PyMethodDef);

// SAFETY: the definitions are immutable after construction and only read by
// CPython (with the GIL held); the raw pointers they hold point at 'static
// C strings and functions.
#[allow(unsafe_code)]
unsafe impl Sync for Def {}

impl Def {
    #[allow(unsafe_code)]
    const fn new(name: &'static [u8], f: FastWithKeywords, doc: &'static [u8]) -> Self {
        // SAFETY: the function pointer is stored in the union's `PyCFunction`
        // member, as C code stores it; CPython casts it back to the fastcall
        // signature because of the flags below. Both are plain function
        // pointers of the same size.
        let meth = unsafe { std::mem::transmute::<FastWithKeywords, ffi::PyCFunction>(f) };
        Def(ffi::PyMethodDef {
            ml_name: name.as_ptr().cast::<c_char>(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunction: meth },
            ml_flags: METH_FASTCALL | METH_KEYWORDS,
            ml_doc: doc.as_ptr().cast::<c_char>(),
        })
    }
}

static START_SPAN: Def = Def::new(
    b"start_span\0",
    start_span,
    b"start_span($self, name, *, kind=None, attributes=None, parent=None, links=None, start_time=None)\n--\n\nStart a span. Its parent is `parent` (a Span or SpanContext) if given, else the current span, else none (a new trace).\0",
);
static EXIT: Def = Def::new(
    b"__exit__\0",
    span_exit,
    b"__exit__($self, exc_type, exc_value, traceback)\n--\n\nEnd the span; an exception is recorded on it and makes it an error.\0",
);
static SET_ATTRIBUTE: Def = Def::new(
    b"set_attribute\0",
    span_set_attribute,
    b"set_attribute($self, key, value)\n--\n\nSet one attribute (converted and bounded like every attribute).\0",
);
static END: Def = Def::new(
    b"end\0",
    span_end,
    b"end($self, end_time=None)\n--\n\nEnd the span (at `end_time`, Unix nanoseconds, if given). Ending twice is harmless and counted.\0",
);

static WSGI_CALL: Def = Def::new(
    b"wsgi_call\0",
    wsgi_call,
    b"wsgi_call(tracer, app, environ, start_response, namer=None)\n--\n\nRun a WSGI application for one request inside a SERVER span; `namer()`, if given, returns the route template when the response starts.\0",
);

/// Install the fastcall methods and functions over pyo3's (at module
/// initialisation).
pub fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // SAFETY: `WSGI_CALL` is 'static and never written; a NULL self makes a
    // module-level function; the module name is a live str.
    #[allow(unsafe_code)]
    let wsgi = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyCFunction_NewEx(
                std::ptr::from_ref(&WSGI_CALL.0).cast_mut(),
                std::ptr::null_mut(),
                m.name()?.as_ptr(),
            ),
        )?
    };
    m.setattr("wsgi_call", wsgi)?;
    let tracer = py.get_type::<Tracer>();
    let span = py.get_type::<Span>();
    method(&tracer, &START_SPAN, "start_span")?;
    method(&span, &EXIT, "__exit__")?;
    method(&span, &SET_ATTRIBUTE, "set_attribute")?;
    method(&span, &END, "end")
}

fn method(ty: &Bound<'_, PyType>, def: &'static Def, name: &str) -> PyResult<()> {
    let py = ty.py();
    // SAFETY: `def` is 'static and never written (CPython only reads it
    // despite the `*mut` in the signature); `ty` is a live type object.
    #[allow(unsafe_code)]
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyDescr_NewMethod(ty.as_type_ptr(), std::ptr::from_ref(&def.0).cast_mut()),
        )?
    };
    ty.setattr(name, descr)
}

/// The arguments of one vectorcall: the instance, the positional arguments,
/// then the keyword values named by `kwnames`.
struct Args<'a, 'py> {
    py: Python<'py>,
    slf: *mut ffi::PyObject,
    args: &'a [*mut ffi::PyObject],
    nargs: usize,
    kwnames: Option<Bound<'py, PyTuple>>,
}

impl<'py> Args<'_, 'py> {
    /// # Safety
    /// The arguments of a vectorcall, as CPython passes them, with the GIL held.
    #[allow(unsafe_code)]
    unsafe fn new(
        py: Python<'py>,
        slf: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> Self {
        let nargs = usize::try_from(nargs).unwrap_or(0);
        // SAFETY: `kwnames` is NULL or a tuple of str owned by the caller.
        let kwnames = unsafe { Bound::from_borrowed_ptr_or_opt(py, kwnames) }
            // SAFETY: CPython passes keyword names as a tuple.
            .map(|k| unsafe { k.downcast_into_unchecked::<PyTuple>() });
        let nkw = kwnames.as_ref().map_or(0, |k| k.len());
        let args = if nargs + nkw == 0 {
            &[][..]
        } else {
            // SAFETY: a vectorcall passes `nargs + len(kwnames)` valid pointers,
            // alive for the call.
            unsafe { std::slice::from_raw_parts(args, nargs + nkw) }
        };
        Args {
            py,
            slf,
            args,
            nargs,
            kwnames,
        }
    }

    /// The instance the method was called on.
    fn this<T: pyo3::PyClass>(&self) -> Bound<'py, T> {
        // SAFETY: `slf` is the instance the method descriptor was called on,
        // alive for the call, and CPython checked its type against the
        // descriptor's class before calling.
        #[allow(unsafe_code)]
        unsafe {
            Bound::from_borrowed_ptr(self.py, self.slf).downcast_into_unchecked::<T>()
        }
    }

    fn positional(&self, i: usize) -> Option<Bound<'py, PyAny>> {
        // SAFETY: `i < nargs <= args.len()`, and the caller holds a reference
        // to every argument for the duration of the call.
        #[allow(unsafe_code)]
        (i < self.nargs).then(|| unsafe { Bound::from_borrowed_ptr(self.py, self.args[i]) })
    }

    /// Keyword arguments: `take(index in names, value)`; an unknown name is
    /// a TypeError.
    fn keywords(
        &self,
        method: &str,
        names: &[&str],
        mut take: impl FnMut(usize, Bound<'py, PyAny>),
    ) -> PyResult<()> {
        let Some(kwnames) = &self.kwnames else {
            return Ok(());
        };
        for (i, key) in kwnames.iter().enumerate() {
            let key = key.downcast_into::<PyString>()?;
            let key = crate::pystr::utf8(&key).unwrap_or("");
            let Some(slot) = names.iter().position(|n| *n == key) else {
                return Err(PyTypeError::new_err(format!(
                    "{method}() got an unexpected keyword argument '{key}'"
                )));
            };
            // SAFETY: keyword values follow the positional ones in `args`
            // (`nargs + len(kwnames)` entries in all).
            #[allow(unsafe_code)]
            let value = unsafe { Bound::from_borrowed_ptr(self.py, self.args[self.nargs + i]) };
            take(slot, value);
        }
        Ok(())
    }
}

/// A `METH_FASTCALL | METH_KEYWORDS` function running `$body(&Args)` the way
/// pyo3 runs its own methods (its trampoline: the GIL marked as held, a Rust
/// error raised as the exception), under the panic guard of `$place`: a
/// panic is reported and the call returns `$fallback(&Args)` ([`crate::guard`]).
macro_rules! fastcall {
    ($name:ident, $body:ident, $place:literal, $fallback:expr) => {
        fastcall!($name, |py, a: &Args<'_, '_>| guard(
            py,
            $place,
            || $body(a),
            || $fallback(a)
        ));
    };
    ($name:ident, $run:expr) => {
        #[allow(unsafe_code)]
        unsafe extern "C" fn $name(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: CPython calls a method implementation with the GIL held,
            // which is what the trampoline requires, and with a valid
            // vectorcall argument array, which `Args::new` reads.
            unsafe {
                pyo3::impl_::trampoline::fastcall_with_keywords(
                    slf,
                    args,
                    nargs,
                    kwnames,
                    |py, slf, args, nargs, kwnames| {
                        $run(py, &Args::new(py, slf, args, nargs, kwnames))
                    },
                )
            }
        }
    };
}

fastcall!(start_span, start_span_body, "tracer.start_span", noop_span);
fastcall!(span_exit, span_exit_body, "span.exit", exit_plainly);
fastcall!(
    span_set_attribute,
    span_set_attribute_body,
    "span.set_attribute",
    none_for
);
fastcall!(span_end, span_end_body, "span.end", none_for);
// Not guarded as a whole: the application call inside must never be
// repeated or lost; pulsetrace's work around it is guarded in `wsgi`.
fastcall!(wsgi_call, |_, a: &Args<'_, '_>| wsgi_call_body(a));

/// `start_span`'s answer after a panic: the no-op span.
fn noop_span(a: &Args<'_, '_>) -> PyResult<*mut ffi::PyObject> {
    let tracer = a.this::<Tracer>();
    Ok(tracer.get().noop_span(&tracer)?.into_ptr())
}

/// `__exit__`'s after a panic: the span still ends and gives the context
/// back, without recording the exception (its argument is what could not
/// be read).
fn exit_plainly(a: &Args<'_, '_>) -> PyResult<*mut ffi::PyObject> {
    let suppressed = a.this::<Span>().get().exit_with(a.py, None);
    Ok(PyBool::new(a.py, suppressed).to_owned().into_ptr())
}

fn none_for(a: &Args<'_, '_>) -> PyResult<*mut ffi::PyObject> {
    Ok(none(a.py))
}

fn too_many(method: &str, most: usize, got: usize) -> PyErr {
    PyTypeError::new_err(format!(
        "{method}() takes at most {most} positional argument(s) ({got} given)"
    ))
}

fn none(py: Python<'_>) -> *mut ffi::PyObject {
    py.None().into_ptr()
}

fn start_span_body(a: &Args<'_, '_>) -> PyResult<*mut ffi::PyObject> {
    let tracer = a.this::<Tracer>();
    if a.nargs > 1 {
        return Err(too_many("start_span", 1, a.nargs));
    }
    let mut kw: [Option<Bound<'_, PyAny>>; 6] = Default::default();
    a.keywords(
        "start_span",
        &[
            "name",
            "kind",
            "attributes",
            "parent",
            "links",
            "start_time",
        ],
        |i, v| kw[i] = Some(v),
    )?;
    let name = match (a.positional(0), kw[0].take()) {
        (Some(_), Some(_)) => {
            return Err(PyTypeError::new_err(
                "start_span() got multiple values for argument 'name'",
            ))
        }
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => {
            return Err(PyTypeError::new_err(
                "start_span() missing 1 required positional argument: 'name'",
            ))
        }
    };
    let name = name.downcast_into::<PyString>().map_err(|e| {
        PyTypeError::new_err(format!(
            "start_span() argument 'name': {}",
            PyErr::from(e).value(a.py)
        ))
    })?;
    let start_time = match kw[5].as_ref().filter(|t| !t.is_none()) {
        Some(t) => Some(t.extract::<u64>().map_err(|e| {
            PyTypeError::new_err(format!(
                "start_span() argument 'start_time': {}",
                e.value(a.py)
            ))
        })?),
        None => None,
    };
    Tracer::start_span(
        &tracer,
        &name,
        kw[1].as_ref(),
        kw[2].as_ref(),
        kw[3].as_ref(),
        kw[4].as_ref(),
        start_time,
    )
    .map(Bound::into_ptr)
}

fn span_exit_body(a: &Args<'_, '_>) -> PyResult<*mut ffi::PyObject> {
    a.keywords("__exit__", &[], |_, _| {})?;
    let suppressed = a
        .this::<Span>()
        .get()
        .exit_with(a.py, a.positional(1).as_ref());
    Ok(PyBool::new(a.py, suppressed).to_owned().into_ptr())
}

fn span_set_attribute_body(a: &Args<'_, '_>) -> PyResult<*mut ffi::PyObject> {
    if a.nargs > 2 {
        return Err(too_many("set_attribute", 2, a.nargs));
    }
    let mut kw: [Option<Bound<'_, PyAny>>; 2] = Default::default();
    a.keywords("set_attribute", &["key", "value"], |i, v| kw[i] = Some(v))?;
    let mut get = |i: usize, name: &str| match (a.positional(i), kw[i].take()) {
        (Some(v), None) | (None, Some(v)) => Ok(v),
        (Some(_), Some(_)) => Err(PyTypeError::new_err(format!(
            "set_attribute() got multiple values for argument '{name}'"
        ))),
        (None, None) => Err(PyTypeError::new_err(format!(
            "set_attribute() missing required argument: '{name}'"
        ))),
    };
    let key = get(0, "key")?;
    let value = get(1, "value")?;
    a.this::<Span>().get().set_attribute(&key, &value);
    Ok(none(a.py))
}

fn span_end_body(a: &Args<'_, '_>) -> PyResult<*mut ffi::PyObject> {
    if a.nargs > 1 {
        return Err(too_many("end", 1, a.nargs));
    }
    let mut kw: [Option<Bound<'_, PyAny>>; 1] = Default::default();
    a.keywords("end", &["end_time"], |i, v| kw[i] = Some(v))?;
    let end_time = match a.positional(0).or_else(|| kw[0].take()) {
        Some(t) if !t.is_none() => Some(t.extract::<u64>().map_err(|e| {
            PyTypeError::new_err(format!("end() argument 'end_time': {}", e.value(a.py)))
        })?),
        _ => None,
    };
    a.this::<Span>().get().end(a.py, end_time);
    Ok(none(a.py))
}

fn wsgi_call_body(a: &Args<'_, '_>) -> PyResult<*mut ffi::PyObject> {
    if a.nargs > 5 {
        return Err(too_many("wsgi_call", 5, a.nargs));
    }
    let mut kw: [Option<Bound<'_, PyAny>>; 1] = Default::default();
    a.keywords("wsgi_call", &["namer"], |i, v| kw[i] = Some(v))?;
    let arg = |i: usize, name: &str| {
        a.positional(i).ok_or_else(|| {
            PyTypeError::new_err(format!("wsgi_call() missing required argument: '{name}'"))
        })
    };
    let tracer = arg(0, "tracer")?.downcast_into::<Tracer>()?;
    let app = arg(1, "app")?;
    let environ = arg(2, "environ")?;
    let start_response = arg(3, "start_response")?;
    let namer = a.positional(4).or_else(|| kw[0].take());
    crate::wsgi::wsgi_call(
        a.py,
        &tracer,
        &app,
        &environ,
        &start_response,
        namer.as_ref(),
    )
    .map(PyObject::into_ptr)
}
