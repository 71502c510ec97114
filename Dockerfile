# otrules as a container image: `otrules consume` by default, any otrules command otherwise.
#   docker build -t otrules .
#   docker run --rm otrules run --format table      # the embedded mode over the bundled sample
# docker-compose.yml builds this image and runs it next to an Apache Kafka broker.
# There is no Docker engine on the build machines: tests/test_compose.py checks this
# file against docker-compose.yml and pyproject.toml, but nothing here builds it.

# -- build: wheels of otrules and every dependency -----------------------------------
FROM python:3.12-slim AS build
# durable_rules ships only as an sdist: its C extension is compiled here.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- run: the wheels installed, no compiler ------------------------------------------
FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels otrules \
 && rm -rf /wheels \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/otrules otrules
USER otrules
WORKDIR /home/otrules
# /metrics, /healthz and /readyz of `otrules consume` (--http-port; --http-host 0.0.0.0 in a container)
EXPOSE 9464
ENTRYPOINT ["otrules"]
CMD ["consume"]
