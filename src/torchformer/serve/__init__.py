"""HTTP serving of ``predict()``: ``create_app(predictor)`` (FastAPI), micro-batching, limits, metrics.

``torchformer serve RUN_OR_EXPORT_DIR`` runs it with uvicorn on 127.0.0.1; see ``app`` for the
endpoints and the error table, ``batching`` for the length-sorted micro-batches, and
``workers`` for ``--workers N`` (N processes behind one port).
"""
