"""The dashboard's stylesheet and its one small script, inlined into every page."""

from __future__ import annotations

CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d8dee4;--bg:#f6f8fa;--head:#24292f;--link:#0969da}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:#fff}
header{display:flex;align-items:center;gap:24px;padding:10px 24px;background:var(--head);color:#fff}
header .brand{color:#fff;font-weight:700;text-decoration:none;font-size:16px}
header nav a{color:#c9d1d9;text-decoration:none;margin-right:16px;padding:4px 0}
header nav a.on{color:#fff;border-bottom:2px solid #fd8c73}
header .live{margin-left:auto;font-size:12px;color:#7ee787}
header .live::before{content:"● "}
main{padding:16px 24px;max-width:1280px}
h1{font-size:22px;margin:4px 0 12px}h2{font-size:16px;margin:22px 0 8px}
h3{font-size:15px;margin:0 0 8px}h4{font-size:13px;margin:12px 0 6px}
a{color:var(--link)}
code,pre,.id{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
table{border-collapse:collapse;width:100%}
th{text-align:left;font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;
letter-spacing:.03em;border-bottom:1px solid var(--line);padding:6px 8px}
td{border-bottom:1px solid var(--line);padding:7px 8px;vertical-align:top}
tbody tr:hover{background:var(--bg)}
table.small td,table.small th{padding:4px 8px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:11.5px;font-weight:600;
letter-spacing:.02em;white-space:nowrap;border:1px solid transparent}
.s-queued{background:#fff8c5;color:#7d4e00;border-color:#eac54f}
.s-initializing{background:#fbefff;color:#8250df;border-color:#d8b9ff}
.s-running{background:#ddf4ff;color:#0969da;border-color:#80ccff}
.s-complete{background:#dafbe1;color:#1a7f37;border-color:#8ddb8c}
.s-executor_error{background:#fff1e5;color:#bc4c00;border-color:#ffb77c}
.s-system_error{background:#ffebe9;color:#cf222e;border-color:#ff8182}
.s-canceling,.s-canceled{background:#eaeef2;color:#57606a;border-color:#d0d7de}
.s-preempted,.s-paused{background:#fff8c5;color:#9a6700;border-color:#eac54f}
.tag{display:inline-block;background:var(--bg);border:1px solid var(--line);border-radius:4px;
padding:0 6px;margin:0 4px 2px 0;font-size:12px}
.why{color:#7d4e00;font-size:12.5px}
.why.big{background:#fff8c5;border:1px solid #eac54f;border-radius:6px;padding:8px 12px}
form.filters{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-end;margin-bottom:14px;
padding:10px 12px;background:var(--bg);border:1px solid var(--line);border-radius:6px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:var(--muted);gap:3px}
form.filters small{color:var(--muted);font-size:11px}
input,select{font:inherit;padding:4px 6px;border:1px solid var(--line);border-radius:5px;
background:#fff;min-width:90px}
button{font:inherit;padding:5px 14px;border-radius:6px;border:1px solid #1f883d;background:#1f883d;
color:#fff;font-weight:600;cursor:pointer}
.clear{font-size:12px;align-self:center}
.title{display:flex;align-items:center;gap:12px}.title h1{margin:4px 0}
form.cancel{margin-left:auto}form.cancel button{background:#fff;color:#cf222e;border-color:#cf222e}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:10px 0}
dt{color:var(--muted)}dd{margin:0}
section.attempt{border:1px solid var(--line);border-radius:6px;padding:12px 14px;margin:10px 0}
ul.syslog{margin:0;padding-left:18px;font-size:13px}ul.syslog li.wait{color:#7d4e00;font-weight:600}
.exec{border-top:1px dashed var(--line);margin-top:8px}
.exec h4 small{color:var(--muted);font-weight:400;margin-left:8px}
.code{font-size:11.5px;padding:0 6px;border-radius:8px;margin-left:6px}
.code.ok{background:#dafbe1;color:#1a7f37}.code.bad{background:#ffebe9;color:#cf222e}
.stream .label{font-size:11px;color:var(--muted);text-transform:uppercase}
pre{background:#0d1117;color:#e6edf3;padding:8px 10px;border-radius:6px;max-height:260px;
overflow:auto;margin:2px 0 8px;white-space:pre-wrap}
.pager{display:flex;gap:20px;margin:12px 0}.empty,.note{color:var(--muted)}
"""

#: Refresh the page's main part every few seconds while anything on it may still change, and
#: stop once nothing does (every task shown is final) or the tab is hidden.
LIVE_JS = """
(function(){
  var every=3000, live=document.getElementById('live');
  function moving(doc){return doc.querySelector('[data-live]')!==null;}
  function tick(){
    if(document.hidden){return setTimeout(tick,every);}
    fetch(location.href,{credentials:'same-origin',headers:{'Accept':'text/html'}})
      .then(function(r){return r.ok?r.text():null;})
      .then(function(html){
        if(html===null){return;}
        var doc=new DOMParser().parseFromString(html,'text/html');
        var fresh=doc.getElementById('main');
        if(fresh){document.getElementById('main').innerHTML=fresh.innerHTML;}
        if(moving(document)){setTimeout(tick,every);}else{live.hidden=true;}
      }).catch(function(){setTimeout(tick,every*2);});
  }
  if(moving(document)){live.hidden=false;setTimeout(tick,every);}
})();
"""
