# One hareg replica: `hareg serve`.  Stateless: metadata lives in etcd, blob
# bytes in the object store, so any number of these run behind a load
# balancer (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY hareg ./hareg
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/hareg hareg \
    && mkdir -p /var/lib/hareg /etc/hareg \
    && chown hareg /var/lib/hareg \
    && rm -rf /src

USER hareg
WORKDIR /var/lib/hareg
EXPOSE 5000

# Ready: etcd and the object store reachable (/readyz answers 200).
HEALTHCHECK --interval=5s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/readyz', timeout=2)"]

ENTRYPOINT ["hareg"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--data-dir", "/var/lib/hareg", "--config", "/etc/hareg/hareg.yaml"]
