"""The web app and JSON API of `python -m fer_jax.serve`: limits, decoding, the app itself.

- `limits`: what a request may hold, and how an upload becomes an RGB image or a 4xx answer;
- `app`: the Starlette app (page, `POST /api/predict`, `GET /health`) around one predictor;
- `static/`: the page (plain HTML and JavaScript, no build step).
"""
