//! Per-application fast paths for framework hooks.
//!
//! A class-level `wrapt` wrapper (how every hook is registered) is bound
//! anew on every attribute access: for Flask's `app.wsgi_app`, that binding
//! costs several thousand instructions per request, more than the SERVER
//! span itself. [`TracedWsgiApp`] is what the Flask hook installs on an
//! application the first time it serves a request (in the instance's
//! `__dict__`, the place Flask documents for WSGI middleware): a bound
//! method that runs the original `wsgi_app` inside the request span, with no
//! Python frame of pulsetrace's in between.
//!
//! [`RouteNamer`] reads a framework's route template natively:
//! `var.get().a.b.c` for a context variable and a path of attributes
//! (Flask: `_cv_request.get().request.url_rule.rule`).
//!
//! GIL and locks: runs with the GIL (it calls the application and reads
//! Python objects) and takes no lock of its own; the request path is
//! `wsgi::traced_request`'s, with its contract.

use crate::ctxvar::ContextVar;
use crate::tracer::Tracer;
use crate::wsgi::traced_request;
use pulsetrace_core::http::Integration;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

/// The route template of the current request: `var.get()` followed by the
/// attributes of `path`, or None when the variable is unset or a step is
/// None. Callable, like any namer `wsgi_call` takes.
#[pyclass(module = "pulsetrace._native", name = "RouteNamer", frozen)]
pub struct RouteNamer {
    var: ContextVar,
    path: Vec<Py<PyString>>,
}

impl RouteNamer {
    pub(crate) fn route<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut value = self.var.get(py)?;
        for name in &self.path {
            if value.is_none() {
                break;
            }
            value = value.getattr(name.bind(py))?;
        }
        Ok(value)
    }
}

#[pymethods]
impl RouteNamer {
    #[new]
    fn new(var: &Bound<'_, PyAny>, path: Vec<Bound<'_, PyString>>) -> PyResult<Self> {
        Ok(RouteNamer {
            var: ContextVar::new(var)?,
            path: path.into_iter().map(Bound::unbind).collect(),
        })
    }

    fn __call__(&self, py: Python<'_>) -> PyResult<PyObject> {
        Ok(self.route(py)?.unbind())
    }
}

/// `func` bound to `instance` (a method, as `instance.attr` would give),
/// whose WSGI calls `(environ, start_response)` run inside a SERVER span;
/// any other call goes to the method untouched. `integration` names the
/// framework whose excluded URLs apply (`crate::http::integration`). Holds its instance like a
/// bound method does, and takes part in garbage collection, so an
/// application that keeps it in its own `__dict__` is still freed when
/// dropped.
#[pyclass(module = "pulsetrace._native", name = "TracedWsgiApp", frozen)]
pub struct TracedWsgiApp {
    tracer: Py<Tracer>,
    func: PyObject,
    instance: PyObject,
    namer: Option<PyObject>,
    integration: Integration,
}

#[pymethods]
impl TracedWsgiApp {
    #[new]
    #[pyo3(signature = (tracer, func, instance, namer=None, integration=None))]
    fn new(
        tracer: Py<Tracer>,
        func: PyObject,
        instance: PyObject,
        namer: Option<PyObject>,
        integration: Option<&str>,
    ) -> PyResult<Self> {
        Ok(TracedWsgiApp {
            tracer,
            func,
            instance,
            namer,
            integration: crate::http::integration(integration)?,
        })
    }

    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyObject> {
        let func = self.func.bind(py);
        let instance = self.instance.bind(py);
        if args.len() != 2 || kwargs.is_some_and(|k| !k.is_empty()) {
            // Not a WSGI call: the method itself, as the application wrote it.
            let mut all = Vec::with_capacity(args.len() + 1);
            all.push(instance.clone());
            all.extend(args.iter());
            return Ok(func.call(PyTuple::new(py, all)?, kwargs)?.unbind());
        }
        let environ = args.get_item(0)?;
        let start_response = args.get_item(1)?;
        let namer = self.namer.as_ref().map(|n| n.bind(py));
        traced_request(
            py,
            self.tracer.bind(py),
            &environ,
            &start_response,
            namer,
            self.integration,
            &|sr| func.call1((instance, &environ, sr)),
        )
    }

    /// The method this wraps, bound to its instance.
    #[getter]
    fn __wrapped__(&self, py: Python<'_>) -> PyResult<PyObject> {
        let instance = self.instance.bind(py);
        Ok(self
            .func
            .bind(py)
            .call_method1("__get__", (instance, instance.get_type()))?
            .unbind())
    }

    #[getter]
    fn __self__(&self, py: Python<'_>) -> PyObject {
        self.instance.clone_ref(py)
    }

    #[getter]
    fn __func__(&self, py: Python<'_>) -> PyObject {
        self.func.clone_ref(py)
    }

    #[getter]
    fn __name__(&self, py: Python<'_>) -> PyResult<PyObject> {
        Ok(self.func.bind(py).getattr("__name__")?.unbind())
    }

    #[getter]
    fn __qualname__(&self, py: Python<'_>) -> PyResult<PyObject> {
        Ok(self.func.bind(py).getattr("__qualname__")?.unbind())
    }

    #[getter]
    fn __doc__(&self, py: Python<'_>) -> PyResult<PyObject> {
        Ok(self.func.bind(py).getattr("__doc__")?.unbind())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let name = self.func.bind(py).getattr("__qualname__")?;
        Ok(format!(
            "<traced bound method {} of {}>",
            name,
            self.instance.bind(py).repr()?
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.tracer)?;
        visit.call(&self.func)?;
        visit.call(&self.instance)?;
        if let Some(n) = &self.namer {
            visit.call(n)?;
        }
        Ok(())
    }
}
