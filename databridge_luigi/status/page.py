"""The HTML page: one self-contained file (style and sorting script inline), a row per dataset coloured by
state, and ``write_page``, which writes it atomically."""
from __future__ import annotations

import html
import os
from datetime import datetime, timezone

from .cells import _changed, _secs, _short_time, _without_id
from .model import STATES, DatasetStatus, sort_key

COLOURS = {  # background, text
    "broken config": ("#7b1fa2", "#fff"), "failing": ("#c62828", "#fff"), "unknown": ("#ef6c00", "#fff"),
    "due": ("#f9a825", "#000"), "fresh": ("#2e7d32", "#fff"), "stage-only": ("#00838f", "#fff"),
    "manual": ("#607d8b", "#fff"), "disabled": ("#bdbdbd", "#000"),
}


_PAGE_STYLE = """
body{font:14px/1.35 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:18px;color:#212121}
h1{font-size:20px;margin:0 0 4px} .meta{color:#555;margin:0 0 10px}
.chips span{display:inline-block;padding:2px 8px;margin:0 6px 6px 0;border-radius:10px;font-weight:600}
table{border-collapse:collapse;width:100%} th,td{padding:5px 8px;text-align:left;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#263238;color:#fff;cursor:pointer;user-select:none;white-space:nowrap;position:sticky;top:0}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums} td.state span{padding:1px 7px;border-radius:9px;font-weight:600;white-space:nowrap}
td{white-space:nowrap} td.err{color:#b71c1c;white-space:normal;min-width:24em;max-width:46em} a{color:#0d47a1}
tr:hover td{filter:brightness(0.96)} td.dest{color:#555;font-size:12px}
""" + "".join(f"tr.state-{state.replace(' ', '-')} td{{background:{tint}}}" for state, tint in {
    "broken config": "#f3e5f5", "failing": "#ffebee", "unknown": "#fff3e0", "due": "#fffde7"}.items())
_PAGE_SCRIPT = """
(function(){
 var t=document.getElementById('status'),hs=t.tHead.rows[0].cells;
 function sortBy(i,asc){
  for(const h of hs){h.classList.remove('sorted-asc','sorted-desc');}
  hs[i].classList.add(asc?'sorted-asc':'sorted-desc');
  var b=t.tBodies[0],rs=Array.from(b.rows),num=hs[i].dataset.type==='num';
  rs.sort(function(x,y){
   var a=x.cells[i].dataset.sort||x.cells[i].textContent,c=y.cells[i].dataset.sort||y.cells[i].textContent;
   var r=num?(parseFloat(a)-parseFloat(c)):a.localeCompare(c);return asc?r:-r;});
  rs.forEach(function(r){b.appendChild(r);});
 }
 for(let i=0;i<hs.length;i++){hs[i].addEventListener('click',function(){sortBy(i,!hs[i].classList.contains('sorted-asc'));});}
 // A link can carry its sort: #sort=Rows&order=desc
 var q=new URLSearchParams(location.hash.slice(1)),col=q.get('sort');
 if(col){for(let i=0;i<hs.length;i++){if(hs[i].textContent.toLowerCase()===col.toLowerCase()){sortBy(i,q.get('order')!=='desc');}}}
})();
"""


def html_page(rows: list[DatasetStatus], title: str = "databridge-luigi status") -> str:
    """One self-contained page: a row per dataset, coloured by state, sortable by any column."""
    e = html.escape
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = [(state, sum(1 for s in rows if s.state == state)) for state in STATES]
    chips = "".join(f'<span style="background:{COLOURS[st][0]};color:{COLOURS[st][1]}">{n} {e(st)}</span>' for st, n in counts if n)
    head = [("Dataset", "text"), ("State", "text"), ("Last version", "text"), ("Published (UTC)", "text"), ("Rows", "num"),
            ("Seconds", "num"), ("Changed", "text"), ("Next due (UTC)", "text"), ("Last failure", "text"), ("Destination", "text")]
    body: list[str] = []
    for s in rows:
        bg, fg = COLOURS.get(s.state, ("#fff", "#000"))
        rank = STATES.index(s.state) if s.state in STATES else len(STATES)
        link = s.task_url or s.log_url
        name = f'<a href="{e(link)}">{e(s.dataset_id)}</a>' if link else e(s.dataset_id)
        if s.last_failure:
            log = f' <a href="{e(s.last_failure.log_url)}">log</a>' if s.last_failure.log_url else ""
            failure = (f"{e(_short_time(s.last_failure.at))} {e(s.last_failure.step)}: {e(_without_id(s.last_failure.error, s.dataset_id))}{log}")
        elif s.state == "broken config":
            failure = f"{e(os.path.basename(s.config))}: {e(s.problem)}"
        else:
            failure = e(s.problem) if s.problem else ""
        state = s.state + (" (running)" if s.running else "")
        body.append(
            f'<tr class="state-{e(s.state.replace(" ", "-"))}" data-state="{e(s.state)}">'
            f'<td>{name}</td><td class="state" data-sort="{rank} {e(s.dataset_id)}"><span style="background:{bg};color:{fg}">{e(state)}</span></td>'
            f'<td>{e(s.last_version or "-")}</td><td>{e(_short_time(s.published_at))}</td>'
            f'<td class="num" data-sort="{s.rows if s.rows is not None else -1}">{"-" if s.rows is None else f"{s.rows:,}"}</td>'
            f'<td class="num" data-sort="{s.seconds if s.seconds is not None else -1}">{_secs(s.seconds)}</td>'
            f'<td>{_changed(s.changed)}</td><td>{e(_short_time(s.next_due) if s.next_due else "manual" if s.state != "broken config" else "-")}</td>'
            f'<td class="err">{failure}</td><td class="dest">{e(s.destination or s.config)}</td></tr>')
    heads = "".join(f'<th data-type="{kind}">{e(label)}</th>' for label, kind in head)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<meta http-equiv="refresh" content="300">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_PAGE_STYLE}</style></head><body>'
            f'<h1>{e(title)}</h1><p class="meta">{len(rows)} datasets · generated {e(generated)}</p>'
            f'<div class="chips">{chips}</div>'
            f'<table id="status"><thead><tr>{heads}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            f'<script>{_PAGE_SCRIPT}</script></body></html>')


def write_page(path: str, rows: list[DatasetStatus]) -> None:
    """Write the page atomically (a reader never sees half of it)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as out:
            out.write(html_page(sorted(rows, key=sort_key)))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
