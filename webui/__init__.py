"""spoold's web UI: a separate process that reads and acts through spoold's store.

Flask application served by waitress (``spoold-webui``, webui/server.py).
One module per part, each a blueprint:

    auth.py       login / logout, roles, API tokens (Flask-Login, Argon2)
    dashboard.py  live counters, runner status, mailouts' progress (polled JSON)
    queue.py      the mailq view, filters, keyset pages, hold/release/requeue/delete
    stats.py      charts, top domains, per-mailout totals, recent deliveries, CSV
    contacts.py   contacts: search, show, add, edit, unsubscribe, delete, CSV upload
    lists.py      contact lists and their members
    mailtemplates.py  templates: editor with a live preview (blueprint "templates")
    send.py       the send page: a template to chosen contacts, or a test first
    mailouts.py   mailouts: progress, counters, pause / resume / cancel
    campaigns.py  campaigns and their scenarios
    unsubscribe.py  the public unsubscribe page and RFC 8058 one-click POST
    api.py        JSON API with token auth; /metrics (Prometheus); /healthz

app.py builds the application (security settings, CSRF, rate limits, the
navigation), storage.py gives each request thread its own store connection,
pages.py holds what every page shares (pagination, formatting, form fields,
user errors), charts.py
draws the statistics charts as SVG.  Templates (templates/, with the shared
macros in macros.html) and static files (static/) ship in the package: the
UI needs no network.
"""
