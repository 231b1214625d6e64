"""Deployment artefacts: ONNX export checked against PyTorch, int8 behind an accuracy gate.

- ``onnx``: ``export_classifier(clf, out_dir)`` writes ``model.onnx`` + tokenizer, settings,
  labels and ``export.json``, after a parity grid against PyTorch (``ParityError`` beyond 1e-4).
- ``ensemble_onnx``: an ensemble whose members share a tokenizer as one graph (reached through
  ``export_classifier``), on the same parity grid.
- ``quantize``: ``quantize_onnx``, ``accuracy_gate``, ``cpu_int8_support``.
- ``bf16``: ``gate_bf16`` (bf16 weights of a PyTorch classifier behind the same gate, the
  verdict in ``bf16_gate.json``) and ``bf16_choice`` (what ``serve --precision auto`` follows).
- ``runtime``: ``OnnxClassifier.from_dir(export_dir)`` — the ``TextClassifier.predict`` contract
  on onnxruntime.
- ``cli``: ``torchformer export`` and ``torchformer quantize``.
"""
