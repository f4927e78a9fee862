"""``endorm batch``: a whole file of requests in the OpenAI batch format, scored offline.

Each input line is one HTTP request (``{"custom_id", "method", "url", "body"}``); each is answered by
the server's own FastAPI app, in-process (or by a deployed fleet over HTTP), so validation, errors,
admission, group-aware scoring and duplicates are exactly the server's. Many lines are in flight at
once, so the engine batches across lines; results are written as they complete, keyed by custom_id,
and a rerun over the same output skips what is already there.

    requests.py   one input line -> a request to send, or the line's own error
    records.py    one answer -> an OpenAI batch output line, and the per-item rows of Parquet
    backends.py   where a request goes: the in-process app, or a fleet through the SDK
    sinks.py      JSONL / Parquet output, append-only, with what a rerun must skip
    runner.py     the bounded window: read lazily, send, write as answers complete
    progress.py   rows, tokens/s and ETA on stderr (a bar on a terminal, log lines otherwise)
    command.py    the CLI: ``endorm batch INPUT -o OUTPUT [--ray ADDRESS | --endpoint URL]``
"""
