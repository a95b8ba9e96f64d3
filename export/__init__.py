"""Export: model backends (torch, TorchScript, ONNX Runtime) and exporters."""
