# dbproxy with the profiling extra (pushes CPU profiles to Pyroscope when
# PYROSCOPE_SERVER_ADDRESS is set). Dependencies come from uv.lock, exactly.
#   docker build -t dbproxy:0.1.0 .
#   docker run --rm -p 6432:6432 -p 9391:9391 -e DBPROXY_UPSTREAM=db:5432 dbproxy:0.1.0
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.12.11-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
# the venv keeps its path in the final image (its scripts' shebangs point into it)
WORKDIR /opt/dbproxy
# dependencies first (cached while only dbproxy's code changes)
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-install-project --no-editable --extra profiling
COPY dbproxy ./dbproxy
RUN uv sync --frozen --no-editable --extra profiling
# The mypyc-compiled hot modules (dbproxy/speedups.py): built against the installed
# sources, then the compiler and mypy leave the venv again.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
    && uv pip install --python .venv/bin/python "mypy>=1.11" "setuptools>=69" \
    && .venv/bin/python -m dbproxy.speedups_build build \
    && .venv/bin/python -m dbproxy.speedups_build check \
    && uv pip uninstall --python .venv/bin/python mypy mypy-extensions setuptools

FROM python:3.12.11-slim-bookworm
COPY --from=build /opt/dbproxy/.venv /opt/dbproxy/.venv
ENV PATH=/opt/dbproxy/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DBPROXY_LISTEN=0.0.0.0:6432 \
    DBPROXY_HTTP_LISTEN=0.0.0.0:9391
RUN useradd --system --uid 10001 dbproxy && install -d -o dbproxy /var/log/dbproxy
USER dbproxy
EXPOSE 6432 9391
HEALTHCHECK --interval=10s --timeout=3s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9391/healthz', timeout=2)"]
ENTRYPOINT ["dbproxy"]
CMD ["run"]
