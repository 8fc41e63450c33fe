"""``model.py`` of the Python-backend Triton models: one exported ONNX graph run by onnxruntime.

:func:`inclust_plus.triton.repository.write_triton_repository` copies this file to
``<graph>_python/1/model.py``; Triton's Python backend stub imports it. It must therefore stay
self-contained: only the standard library, numpy, onnxruntime and Triton's
``triton_python_backend_utils``; nothing from inclust_plus (the server's Python need not have it).

Dynamic batching hands :meth:`TritonPythonModel.execute` several requests at once; their rows are
concatenated into one onnxruntime call and split again, which is where batching pays off. A bad
request (covariate index out of range, mismatched row counts) gets its own error response while
the other requests in the same batch are answered normally.

CSR models (inputs ``values``, ``indices``, ``rows``: one request is one CSR batch of
``len(covariate)`` cells) are concatenated the same way, each request's ``rows`` shifted by the cells
of the requests before it; a request's cell count is the length of its ``covariate``.
"""

import json
import os
import sys
import threading

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (documentation, linters): nothing to serve
    pb_utils = None

COVARIATE_INPUTS = ("covariate", "target_covariate")
CSR_INPUTS = ("values", "indices", "rows")


def _providers(args):
    """CUDA when Triton placed this instance on a GPU and onnxruntime-gpu is installed, else CPU."""
    import onnxruntime as ort

    if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": int(args.get("model_instance_device_id", 0))}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# Python-backend stubs built against numpy 1 (as in the nvidia-pytriton build of Triton 2.51) read
# numpy 2 arrays with the wrong element layout: request tensors come out as wrong numbers and output
# tensors are refused. DLPack describes dtype and shape itself, so with numpy 2 the tensors cross
# the stub through DLPack instead (correct with either kind of stub); with numpy 1, the usual calls.
NUMPY2 = int(np.__version__.split(".")[0]) >= 2


def _array(tensor):
    return np.from_dlpack(tensor) if NUMPY2 else tensor.as_numpy()


_HANDING_OVER = threading.local()


def _tensor(name, array):
    array = np.ascontiguousarray(array)
    if not NUMPY2:
        return pb_utils.Tensor(name, array)
    _HANDING_OVER.active = True
    try:
        return pb_utils.Tensor.from_dlpack(name, array)
    finally:
        _HANDING_OVER.active = False


def _quiet_dlpack_capsules():
    """Silence one known harmless message per output tensor in the DLPack path.

    The stub renames the capsule it consumed "used_dlpack" (the DLPack convention is
    "used_dltensor"), so numpy's capsule destructor then fails to read it and reports
    "PyCapsule_GetPointer called with incorrect name" as an unraisable error; the data has been
    handed over correctly by then. Only that message, raised while handing a tensor over, is dropped.
    """
    default = sys.unraisablehook

    def hook(unraisable):
        err = unraisable.exc_value
        if getattr(_HANDING_OVER, "active", False) and isinstance(err, ValueError) and "called with incorrect name" in str(err):
            return
        default(unraisable)

    sys.unraisablehook = hook


class TritonPythonModel:
    """Triton's entry point: ``initialize`` once per instance, ``execute`` per batch of requests."""

    def initialize(self, args):
        import onnxruntime as ort

        if NUMPY2:
            _quiet_dlpack_capsules()
        config = json.loads(args["model_config"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        self.n_covariates = len(json.loads(params.get("inclust.covariate_categories", "[]"))) or None
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, sess_options=options, providers=_providers(args))

    def _feed(self, request):
        """The request's arrays by input name, or an error message."""
        feed = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                return None, f"input {name!r} is missing"
            feed[name] = _array(tensor)
        csr = "rows" in feed
        rows = {len(a) for k, a in feed.items() if (k not in CSR_INPUTS) or not csr}
        entries = {len(feed[k]) for k in CSR_INPUTS if k in feed} if csr else set()
        if len(rows) != 1 or len(entries) > 1:
            return None, "inputs have different numbers of rows" if len(rows) != 1 else "values, indices and rows differ in length"
        if csr and feed["rows"].size and (int(feed["rows"].min()) < 0 or int(feed["rows"].max()) >= len(feed["covariate"])):
            return None, "rows index out of range of the request's cells"
        for name in COVARIATE_INPUTS:
            values = feed.get(name)
            if values is None or self.n_covariates is None or values.size == 0:
                continue
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= self.n_covariates:
                return None, f"{name} index out of range 0..{self.n_covariates - 1} (got {low if low < 0 else high})"
        return feed, None

    def execute(self, requests):
        feeds, errors = [], []
        for request in requests:
            feed, error = self._feed(request)
            feeds.append(feed)
            errors.append(error)
        good = [f for f in feeds if f is not None]
        results = None
        if good:
            if "rows" in self.inputs:  # CSR: shift each request's cell ids past the cells before it
                offsets = np.cumsum([0] + [len(f["covariate"]) for f in good[:-1]])
                good = [{**f, "rows": (f["rows"] + np.int32(o)).astype(np.int32)} for f, o in zip(good, offsets)]
            batch = {name: np.concatenate([f[name] for f in good]) for name in self.inputs}
            try:
                values = self.session.run(self.outputs, batch)
            except Exception as err:  # onnxruntime raises its own types; answer every request with it
                message = f"onnxruntime failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                return [pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)) for _ in requests]
            results = dict(zip(self.outputs, values))
        responses, start = [], 0
        for feed, error in zip(feeds, errors):
            if error is not None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(error)))
                continue
            stop = start + len(feed["covariate"])
            tensors = [_tensor(name, results[name][start:stop]) for name in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses

    def finalize(self):
        self.session = None
