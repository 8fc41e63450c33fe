"""Triton Inference Server: everything that writes, serves or calls a Triton model repository.

One module per job, all torch-free (the runtime's ``inclust-run --triton`` and ``inclust-run serve``
use them; ``inclust-export --triton`` writes with them):

=================  ============================================================================
``layout``         the names in a repository (model suffixes, index and label files): one place
``model_config``   ``config.pbtxt`` as Triton's own ``ModelConfig`` protobuf, written and read
                   with ``google.protobuf.text_format`` (needs tritonclient[grpc])
``repository``     :func:`~.repository.write_triton_repository`: an export folder -> a repository
``python_model``   the Python-backend ``model.py`` copied into every ``*_python`` model
``client``         :class:`~.client.TritonBackend`: the runtime's Backend that runs graphs on a server
``server_env``     finding the PyPI server build (nvidia-pytriton) in a Python environment
``staging``        the private backend folder a local server starts with, and which models it loads
``server``         starting, watching and stopping a local tritonserver process
``cli``            the ``--triton`` options of the run commands and the ``inclust-run serve`` command
=================  ============================================================================

Third-party Triton packages (tritonclient, protobuf) are imported inside functions only, so the
base runtime install, which has neither, imports every module here.
"""
