//! ONNX model writing for distill (work in progress: see issue 21).
