"""Renderers: every format a report is shown in, each a module of its own that reads the report model
(analyze/report.py) and nothing else. A new format goes here, beside them:

- ``text``: the terminal summary (``summary_lines``) and the lines of a threshold check (``threshold_lines``);
- ``tables``: the CSV tables (``write_csv``);
- ``html``: the self-contained HTML page (``render_html``, ``write_html``, ``write_report_html``).
"""
