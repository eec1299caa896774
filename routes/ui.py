"""The dashboard (CONTRACT 3.4): a read-only web page over the API.

The service sends the browser three files, one HTML shell (the same for
every view), one script and one stylesheet, from `routes/static/`; the
script fetches everything it shows from the JSON API, with the visitor's
token, like any other client. So the shell holds no data and loads without
a token, and nothing here is API: these routes are not in the OpenAPI
document.
"""
import mimetypes
from pathlib import Path

from flask import Blueprint, current_app, redirect, request
from werkzeug.exceptions import NotFound
from werkzeug.security import safe_join

STATIC = Path(__file__).resolve().parent / "static"

# 3.4: scripts, styles and fetches from this origin only, so no inline
# script (nor a stored value that somehow reached the markup) can run and
# nothing is loaded from another host; no <base> or form posting elsewhere;
# no framing (clickjacking), said twice for browsers that predate
# frame-ancestors.
POLICY = ("default-src 'self'; base-uri 'none'; form-action 'self'; "
          "frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": POLICY, "X-Frame-Options": "DENY",
                "Referrer-Policy": "same-origin"}

blp = Blueprint("ui", __name__)


def page_headers(policy=POLICY):
    """An after_request hook giving a blueprint's responses the page headers
    (with `policy` as their Content-Security-Policy), errors included."""
    def secure(response):
        response.headers.update({**PAGE_HEADERS, "Content-Security-Policy": policy})
        return response
    return secure


blp.after_request(page_headers())


def page_file(filename):
    """One of our files (a few KiB each), read whole: a response holding no
    open file, with an ETag. no-cache: the browser asks each time (a 304
    when unchanged), so the shell and script of an upgraded server never mix
    with stale ones."""
    path = safe_join(str(STATIC), filename)
    if path is None or not Path(path).is_file():
        raise NotFound()   # the app's usual problem 404
    response = current_app.response_class(Path(path).read_bytes(),
                                          mimetype=mimetypes.guess_type(path)[0])
    response.add_etag()
    response.cache_control.no_cache = True
    return response.make_conditional(request)


@blp.get("/")
def home():
    return redirect("/ui/")


@blp.get("/ui/")
@blp.get("/ui/activity")
@blp.get("/ui/instances/<uuid:instance_id>")
def shell(instance_id=None):
    # One shell for every view: the script picks the view from the URL.
    return page_file("dashboard.html")


@blp.get("/ui/static/<path:filename>")
def static_file(filename):
    return page_file(filename)
