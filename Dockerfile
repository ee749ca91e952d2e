# kumiho-sse-gateway: `serve` in front of the Kumiho server named by the environment
# (KUMIHO_SERVER_ENDPOINT, KUMIHO_AUTH_TOKEN, KUMIHO_GATEWAY_*; see the README).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KUMIHO_GATEWAY_HOST=0.0.0.0 \
    KUMIHO_GATEWAY_PORT=8000

RUN useradd --create-home --uid 10001 gateway && mkdir /data && chown gateway /data
WORKDIR /app

# The dependencies (and the build backend) in a layer of their own, read from
# pyproject.toml alone: a change to the code or the README reuses this layer.
# The otel extra too: tracing is off until OTEL_* variables ask for it.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies'] + p['project']['optional-dependencies']['otel']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the gateway itself, with nothing left to download.
COPY README.md ./
COPY gateway ./gateway
COPY static ./static
RUN pip install --no-deps --no-build-isolation . && rm -rf /app/gateway /app/static /app/build /app/*.egg-info

USER gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('KUMIHO_GATEWAY_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["kumiho-sse-gateway"]
CMD ["serve"]
