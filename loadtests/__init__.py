"""Load tests (locust) and the side-by-side benchmark harness for EndoRM server.

    python -m loadtests.run     start a local server, run a bounded headless locust test, print the summary
    python -m loadtests.bench   measure the service against in-process, stock-vLLM and naive baselines

See docs/loadtests.md. Nothing here is imported by the service.
"""
