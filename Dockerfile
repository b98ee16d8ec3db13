# Placeholder until the deploy issue: one image for every role, chosen by command.
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir .
USER nobody
CMD ["workfloo-bridge", "serve", "--host", "0.0.0.0"]
