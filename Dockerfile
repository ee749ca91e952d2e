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
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY static ./static
RUN pip install . && rm -rf /app/gateway /app/static

USER gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('KUMIHO_GATEWAY_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["kumiho-sse-gateway"]
CMD ["serve"]
