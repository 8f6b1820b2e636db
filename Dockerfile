# The worker image: runs `luigi --module databridge_luigi …` (AWS Batch job or docker compose).
# python-oracledb thin mode talks to Oracle directly: no Instant Client, no private RPMs, no alien.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATABRIDGE_CONFIG_DIR=/app/configs \
    LUIGI_CONFIG_PATH=/app/luigi.cfg

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin databridge
WORKDIR /app

# Dependencies first (cached layer), pinned to exact versions by deploy/constraints.txt.
COPY setup.py pyproject.toml deploy/constraints.txt ./
COPY databridge_luigi ./databridge_luigi
RUN pip install --constraint constraints.txt .

COPY luigi.cfg ./luigi.cfg
COPY configs ./configs
COPY scripts ./scripts

USER databridge
# Secrets come from env DATABRIDGE_CONN_* or Secrets Manager (DATABRIDGE_SECRETS_PREFIX or DATABRIDGE_SECRETS_ID) at run time, never baked in.
ENTRYPOINT ["luigi", "--module", "databridge_luigi"]
CMD ["PublishAll", "--scheduler-host", "luigid"]
