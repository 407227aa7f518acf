# searcher image, in two variants from one file:
#   gpu (default): TensorFlow with CUDA and cuDNN, for `searcher worker` on GPU nodes;
#   cpu: the same searcher without CUDA and cuDNN (its base is a 0.6 GB download, the GPU
#        base several GB), for the dashboard, `searcher create`, `status`, `report` and
#        workers on CPU-only hosts.
#
#   docker build -t searcher:local .
#   docker build --build-arg VARIANT=cpu -t searcher-cpu:local .
#   docker run --rm --gpus all searcher:local worker cifar-cnn --storage URL
#
# Reproducible: the base images are pinned (below), and pip installs the versions the tests
# ran with, from constraints.txt. The build fails if the base image's TensorFlow is not the
# one constraints.txt pins (its CUDA libraries belong to it; pip must never replace it).
#
# Moving TensorFlow: change the tensorflow pin in constraints.txt (regenerate it: see its
# header), both tags below, and both digests. Look a tag's digest up in the registry:
#   docker buildx imagetools inspect tensorflow/tensorflow:2.21.0-gpu
#   docker buildx imagetools inspect tensorflow/tensorflow:2.21.0
# and write FROM tensorflow/tensorflow:TAG@sha256:DIGEST, with the "Digest:" line it prints
# first (for a multi-platform tag, the index, which serves every platform). With a digest, a
# tag that is moved or re-pushed upstream cannot change what is built. The tag stays for
# people to read: Docker pulls by the digest and ignores it, so keep the two in step.
#
# The CPU base is pinned by the digest Docker Hub lists for 2.21.0 (linux/amd64). The GPU base
# is pinned by its exact version tag only: add its digest with the command above.
ARG VARIANT=gpu

FROM tensorflow/tensorflow:2.21.0-gpu AS base-gpu
FROM tensorflow/tensorflow:2.21.0@sha256:f325279f01a3e742a1285d8d736b7e600f72ccf8b55cc19ee0a90b8cbfce4c7a AS base-cpu

FROM base-${VARIANT}

# PIP_BREAK_SYSTEM_PACKAGES: the base image installs TensorFlow into the system
# Python with pip, and we add to that same environment. Older pip ignores it.
# CUDA_DEVICE_ORDER: GPU numbers match nvidia-smi, so `--gpu auto` picks the same index for
# the same card in every container on the host.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /opt/searcher

# Dependencies first, from pyproject.toml and the constraints alone, so editing the code
# does not reinstall optuna, plotly and friends. The empty package is a placeholder.
# -c on the command line, not PIP_CONSTRAINT: the constraints hold the runtime packages only,
# and must not reach the isolated environment that builds searcher (setuptools>=69 there).
COPY constraints.txt pyproject.toml README.md ./
# check_tf: the image's TensorFlow is the pinned one, before pip runs and after.
RUN check_tf() { \
      have=$(python3 -c 'import importlib.metadata as m; print(m.version("tensorflow"))'); \
      pin=$(sed -n 's/^tensorflow==//p' constraints.txt); \
      [ "$have" = "$pin" ] || { echo "TensorFlow $have in the image, constraints.txt pins $pin: change the FROM tags and digests with the pin" >&2; exit 1; }; \
    } \
 && check_tf \
 && mkdir searcher && touch searcher/__init__.py \
 && python3 -m pip install --no-cache-dir -c constraints.txt . \
 && python3 -m pip uninstall -y searcher \
 && rm -rf searcher build ./*.egg-info \
 && check_tf

COPY searcher ./searcher
RUN python3 -m pip install --no-cache-dir --no-deps . \
 && rm -rf build ./*.egg-info \
 && searcher --help > /dev/null

# Non-root user. 10001 avoids the uid 1000 user some base images already have; Kubernetes
# runs the pods as this uid (runAsUser: 10001). /var/lib/searcher/locks holds the per-GPU
# lock files of `--gpu auto`; a new named volume mounted there copies this owner, so the user
# can write to it.
RUN groupadd --gid 10001 searcher \
 && useradd --uid 10001 --gid 10001 --no-log-init --create-home --shell /usr/sbin/nologin searcher \
 && mkdir -p /var/lib/searcher/locks \
 && chown -R 10001:10001 /var/lib/searcher

USER 10001:10001
WORKDIR /home/searcher
ENV SEARCHER_LOCK_DIR=/var/lib/searcher/locks

# optuna-dashboard, when the command is `dashboard --port 8080`.
EXPOSE 8080

ENTRYPOINT ["searcher"]
CMD ["--help"]
