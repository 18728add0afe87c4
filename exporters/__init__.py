"""The student out of the repo: a timm / Hugging Face folder with its model card, and an ONNX file."""
