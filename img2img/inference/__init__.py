"""Using a trained model: the translator (torch or onnxruntime), size handling and tiling, export."""
