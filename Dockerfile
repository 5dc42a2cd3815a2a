# The eventsched image: the wheel on a slim Python, run as a user without privileges.
#   docker build -t eventsched:local .
#   docker run --rm eventsched:local --version
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml MANIFEST.in README.md ./
COPY eventsched eventsched
COPY cli cli
COPY lua lua
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 eventsched
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY examples /opt/eventsched/examples
USER eventsched
WORKDIR /home/eventsched
ENTRYPOINT ["eventsched"]
CMD ["--help"]
