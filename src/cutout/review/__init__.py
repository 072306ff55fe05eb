"""The correction web page and its JSON API: people accept, reject or repaint doubtful masks.

`queue.ReviewQueue` holds the actions on the feedback store, `claims.Claims` keeps two reviewers off
one item, `app.create_app` serves both the API (``/api/items``) and the page (``static/``, plain
HTML/JS/CSS that works offline) behind `middleware` (body cap, security headers), and
`app.serve_review` runs it for `cutout review serve`.
"""
