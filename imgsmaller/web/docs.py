"""The API reference page at `/docs`, with curl examples for this server's URL."""

import json
import shlex

from flask import Blueprint, current_app, render_template, request

from ..params import INPUTS_LISTED, OUTPUTS
from ..service import base_url
from .pages import never_cache_pages, session_user

bp = Blueprint("docs", __name__)
bp.after_request(never_cache_pages)


@bp.get("/docs")
def show_docs():
    user = session_user()
    config = current_app.config
    base = base_url(request, config)
    key_prefix = user["key_prefix"] if user else None
    return render_template(
        "docs.html",
        base=base,
        key_prefix=key_prefix,
        examples=docs_examples(base, key_prefix, user["allowed_domain"] if user else None),
        daily_limit=config["DAILY_LIMIT"],
        upload_max_mb=f"{config['UPLOAD_MAX_MB']:g}",
        ttl_hours=f"{config['RESULT_TTL_HOURS']:g}",
        outputs=OUTPUTS,
        inputs=list(INPUTS_LISTED),
    )


def docs_examples(base, key_prefix, domain):
    """The curl commands of /docs, ready to paste: this server's URL, the reader's key in $IMGSMALLER_API_KEY."""
    def url(path):
        return shlex.quote(base + path)  # base may come from the Host header: never paste it unquoted

    key = '-H "X-API-Key: $IMGSMALLER_API_KEY"'
    file_url = json.dumps({"file_url": f"https://{domain or 'example.com'}/images/hero.jpg", "target_size": "50KB"})
    return {
        "key": f"export IMGSMALLER_API_KEY='{key_prefix or 'isk_'}…'   # paste your full key here",
        "quick": (
            f"result_url=$(curl -s {key} \\\n  -F file=@photo.jpg -F target_size=200KB -F output=webp \\\n"
            f"  {url('/api/v1/compress')} | jq -r .result_url)\n"
            'until [ "$(curl -s "$result_url" | jq -r .status)" != processing ]; do sleep 1; done\n'
            'curl -s -o photo-small.webp "$(curl -s "$result_url" | jq -r .download)"'
        ),
        "info": f"curl -s {key} {url('/api/v1/info')}",
        "multipart": (f"curl -s {key} \\\n  -F file=@photo.jpg -F target_size=200KB -F output=webp \\\n"
                      f"  {url('/api/v1/compress')}"),
        # printf is a shell builtin: a big image's base64 never hits the argument length limit.
        "base64": (
            "printf '{\"file_base64\": \"%s\", \"output\": \"avif\"}' \"$(base64 -w0 logo.png)\" |\n"
            f"  curl -s {key} -H 'Content-Type: application/json' --data-binary @- \\\n"
            f"  {url('/api/v1/compress')}"
        ),
        "url": (f"curl -s {key} -H 'Content-Type: application/json' \\\n  -d '{file_url}' \\\n"
                f"  {url('/api/v1/compress')}"),
        "result": f"curl -s {url('/result/')}PROGRESS_KEY",
        "download": f"curl -s -OJ {key} {url('/download/12345')}",
    }
