# EndoRM server, GPU image: the project on vLLM's own CUDA image, pinned to the vLLM
# version of the `gpu` extra in pyproject.toml (tests/deploy checks the two agree).
#   docker build -t endorm-server:0.1.0-gpu .
#   docker run --gpus all -p 8000:8000 -v endorm-models:/models \
#     -e ENDORM_MODEL=Qwen/Qwen2.5-7B-Instruct endorm-server:0.1.0-gpu
# CPU variant: Dockerfile.cpu. Kubernetes: deploy/ and docs/deploy.md.
FROM vllm/vllm-openai:v0.32.0

# Model cache: HF_HOME (and generated models) on /models, writable by the service user;
# mount a volume there to keep weights across restarts.
ENV HF_HOME=/models/huggingface \
    ENDORM_CACHE_DIR=/models/endorm \
    HOME=/home/endorm \
    PYTHONUNBUFFERED=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it (deploy/ uses 10001).
RUN groupadd --gid 10001 endorm \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/endorm \
        --shell /usr/sbin/nologin endorm \
    && mkdir -p /models/huggingface /models/endorm \
    && chown -R 10001:10001 /models

WORKDIR /opt/endorm
COPY pyproject.toml README.md ./
COPY service ./service
# ./[gpu] (the project with its `gpu` extra) pins vllm==0.32.0, which the base image
# already has: pip keeps it and adds only what is missing. The checks after it fail the
# build if the image's vLLM is not the pinned one or the CLI does not start.
RUN python3 -m pip install --no-cache-dir "./[gpu]" \
    && python3 -c "import vllm; assert vllm.__version__.split('+')[0] == '0.32.0', vllm.__version__" \
    && endorm serve --help > /dev/null

USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["endorm", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8000"]
