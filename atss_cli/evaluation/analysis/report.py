"""report.html: one page, opened from its folder as a file, that loads nothing from the network.

    write_report(analysis, out_dir) -> Path

The charts and gallery pictures are files beside the page (relative links); CSS and one small
script are inline. Every string from the user's data (class names, file names) is escaped.
The script writes into the page how many pictures loaded (`<body data-images-loaded=N
data-images-failed=M>`) and lists a picture that failed, so a missing file shows.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from atss_cli.atomic import atomic_write_text

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
th{background:#f4f4f4}td.n{text-align:left}img.fig{max-width:100%}
.gal{display:flex;flex-wrap:wrap;gap:10px}.gal figure{margin:0;width:380px}
.gal img{width:100%}.gal figcaption{font-size:12px}.note{color:#666;font-size:12px}
#failed{color:#b00}
"""

SCRIPT = """
(function(){
  var imgs=Array.prototype.slice.call(document.images), done=0, ok=0, bad=[];
  function finish(){document.body.setAttribute('data-images-loaded',ok);
    document.body.setAttribute('data-images-failed',bad.length);
    document.body.setAttribute('data-images-total',imgs.length);
    if(bad.length){document.getElementById('failed').textContent='pictures that did not load: '+bad.join(', ');}}
  function one(img,good){if(good){ok++;}else{bad.push(img.getAttribute('src'));} if(++done===imgs.length){finish();}}
  if(!imgs.length){finish();}
  imgs.forEach(function(img){
    if(img.complete){one(img,img.naturalWidth>0);}
    else{img.addEventListener('load',function(){one(img,img.naturalWidth>0);});
         img.addEventListener('error',function(){one(img,false);});}
  });
})();
"""


def _f(v, digits=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and v < 0) else f"{v:.{digits}f}"


def _table(head, rows, left=1) -> str:
    h = "".join(f"<th>{escape(str(x))}</th>" for x in head)
    body = []
    for r in rows:
        cells = "".join(f"<td class=n>{escape(str(x))}</td>" if i < left else f"<td>{escape(str(x))}</td>"
                        for i, x in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


def write_report(a: dict, out_dir) -> Path:
    out_dir = Path(out_dir)
    files = a["files"]
    parts = [f"<h1>Detection analysis: {escape(a['inputs']['name'])}</h1>",
             f"<p>{a['inputs']['num_images']} images, {a['inputs']['num_annotations']} ground-truth boxes "
             f"({a['inputs']['num_crowd']} crowd), {a['inputs']['num_detections']} detections, "
             f"{len(a['inputs']['categories'])} classes.</p><p id=failed></p>"]
    s = a["coco"]
    parts.append("<h2>COCO metrics</h2>" + _table(["metric", "value"], [[k, _f(v)] for k, v in s.items()]))
    t = a["tide"]
    parts.append("<h2>Where the AP goes (TIDE)</h2>"
                 f"<p>AP50 {t['ap50']:.2f} (TIDE's 0-100 points). dAP: what AP50 gains when that one error "
                 "kind is fixed; counts: errors of that kind.</p>"
                 + _table(["error", "dAP", "count"],
                          [[k, f"{v:.2f}", t["counts"][k]] for k, v in t["dap"].items()])
                 + _table(["split", "dAP"], [[k, f"{v:.2f}"] for k, v in t["special_dap"].items()])
                 + f"<img class=fig src='{files['tide']}' alt='TIDE chart'>")
    parts.append("<h2>Precision-recall</h2>"
                 f"<img class=fig src='{files['pr_all']}' alt='PR curves, all classes'>"
                 f"<img class=fig src='{files['pr_per_class']}' alt='PR curves per class'>")
    rows = sorted(a["per_class"], key=lambda c: -c["ap"])
    parts.append("<h2>AP per class</h2>"
                 f"<img class=fig src='{files['per_class_ap']}' alt='AP per class'>"
                 + _table(["class", "AP", "AP50", "AP75", "APs", "APm", "APl", "GT", "detections"],
                          [[c["name"], _f(c["ap"]), _f(c["ap50"]), _f(c["ap75"]), _f(c["ap_small"]),
                            _f(c["ap_medium"]), _f(c["ap_large"]), c["num_gt"], c["num_detections"]]
                           for c in rows]))
    cm = a["confusion"]
    parts.append("<h2>Confusion matrix</h2>"
                 f"<p>IoU >= {cm['iou_thresh']}, score >= {cm['score_thresh']}; rows: ground truth, columns: "
                 "detected class, background last. Largest off-diagonal counts:</p>"
                 + _table(["ground truth", "detected as", "count"], cm["top_confusions"], left=2)
                 + f"<img class=fig src='{files['confusion']}' alt='confusion matrix'>")
    g = a["gallery"]
    if g.get("skipped"):
        parts.append(f"<h2>Gallery</h2><p>{escape(g['skipped'])}</p>")
    else:
        figs = "".join(
            f"<figure><img src='{escape(e['picture'])}' alt='{escape(e['file_name'])}'><figcaption>"
            f"{escape(e['file_name'])} (id {e['image_id']}): {e['false_positives']} false positives, "
            f"{e['missed']} missed</figcaption></figure>" for e in g["images"])
        parts.append("<h2>Gallery: the images with the most errors</h2>"
                     "<p class=note>red: false positive (class, score); orange: missed ground truth; "
                     f"green: true positive. Ranked by {escape(g['rank'])}.</p><div class=gal>{figs}</div>")
    parts.append("<p class=note>All numbers are in analysis.json beside this page.</p>")
    html = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src 'self' file:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<title>Detection analysis</title><style>{CSS}</style></head><body>{''.join(parts)}"
            f"<script>{SCRIPT}</script></body></html>")
    path = out_dir / "report.html"
    atomic_write_text(path, html)
    return path
