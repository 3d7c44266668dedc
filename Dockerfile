# GPU image from the same Pipfile.lock as the CPU set-up.
#   docker build -t bpfree .
#   docker run --gpus all -it --user "$(id -u):$(id -g)" \
#       -v "$PWD/data:/app/data" -v "$HOME/datasets:/datasets:ro" bpfree \
#       ./train.bash data/exp --dataset=cifar10 --algorithm=dfa \
#       --data_dir=/datasets
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
RUN .venv/bin/python -m compileall -q /app/*.py
ENV PATH="/app/.venv/bin:$PATH"

# Not root: what it writes into a mounted folder belongs to the user that
# `docker run --user` names (else uid 1000, the first user of most Linux
# machines), never to root.  HOME is writable whoever that is (Keras and
# matplotlib keep their settings there).
RUN useradd --uid 1000 --user-group --no-create-home bpfree \
 && mkdir -p /app/data && chown bpfree:bpfree /app/data
ENV HOME=/tmp
USER bpfree
CMD ["./train.bash", "data/quickstart", "--dataset=digits", "--algorithm=dfa"]
