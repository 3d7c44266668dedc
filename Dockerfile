# GPU image from the same Pipfile.lock as the CPU set-up.
#   docker build -t bpfree .
#   docker run --gpus all -it -v "$PWD/data:/app/data" bpfree \
#       ./train.bash data/exp --dataset=cifar10 --algorithm=dfa
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIPENV_VENV_IN_PROJECT=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app

# The locked packages, plus the CUDA libraries of TensorFlow's "and-cuda"
# extra (the lock file's `gpu` category).
COPY Pipfile Pipfile.lock ./
RUN pip install "pipenv==2026.10.3" \
 && pipenv sync --dev --categories="packages dev-packages gpu" \
 && sha256sum Pipfile.lock | cut -d' ' -f1 > .venv/.synced

COPY . .
ENV PATH="/app/.venv/bin:$PATH"
CMD ["./train.bash", "data/quickstart", "--dataset=digits", "--algorithm=dfa"]
