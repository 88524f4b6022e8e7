# The escrow service: `escrow serve` applies pending migrations, then serves on ESCROW_PORT.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY escrow ./escrow
COPY migrations ./migrations
# The tested versions (constraints.txt), not whatever is newest on the day of the build.
RUN pip install -c constraints.txt . && useradd --system --no-create-home escrow && mkdir /data && chown escrow /data

USER escrow
ENV ESCROW_HOST=0.0.0.0 \
    ESCROW_PORT=8000 \
    ESCROW_SECRET_KEY_FILE=/data/secret.key
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
CMD ["escrow", "serve"]
