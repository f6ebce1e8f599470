package l4handler

import (
	"html/template"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// processStart is when Between's package was initialized: the process start
// as far as the admin API can tell.
var processStart = time.Now()

// Info is the body of GET /between/info.
type Info struct {
	Version        string    `json:"version"`          // Between's module version, "(devel)" in a local build
	CaddyL4Version string    `json:"caddy_l4_version"` // caddy-l4's module version
	CaddyVersion   string    `json:"caddy_version"`    // Caddy's version
	PID            int       `json:"pid"`              // process id
	StartTime      time.Time `json:"start_time"`       // process start
	Uptime         string    `json:"uptime"`           // time since start, Go duration syntax
	UptimeSeconds  float64   `json:"uptime_seconds"`   // the same in seconds
	Handlers       int       `json:"handlers"`         // running between handlers
}

// moduleVersions returns the versions of Between and caddy-l4 from the
// binary's build information.
func moduleVersions() (between, l4 string) {
	between, l4 = "(devel)", "(unknown)"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return between, l4
	}
	const self, caddyL4 = "github.com/caddy-between/between", "github.com/mholt/caddy-l4"
	if bi.Main.Path == self && bi.Main.Version != "" {
		between = bi.Main.Version
	}
	for _, d := range bi.Deps {
		v := d.Version
		if d.Replace != nil && d.Replace.Version != "" {
			v = d.Replace.Version
		}
		switch d.Path {
		case self:
			between = v
		case caddyL4:
			l4 = v
		}
	}
	return between, l4
}

func serveInfo(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return methodNotAllowed(w, http.MethodGet)
	}
	between, l4 := moduleVersions()
	simple, _ := caddy.Version()
	up := time.Since(processStart)
	return writeJSON(w, Info{
		Version: between, CaddyL4Version: l4, CaddyVersion: simple,
		PID: os.Getpid(), StartTime: processStart.UTC(),
		Uptime: up.Round(time.Second).String(), UptimeSeconds: up.Seconds(),
		Handlers: len(running.all()),
	})
}

// handlerInfo is h's entry in GET /between/servers.
func handlerInfo(h *Handler) HandlerInfo {
	s := h.state.stats.Snapshot()
	return HandlerInfo{
		Name: h.Name, Locations: h.app.locations(h.Name), Config: h.raw,
		ActiveConnections: s.Active, TotalConnections: s.Total, RefusedConnections: s.Refused,
		RxTotal: s.Rx, TxTotal: s.Tx,
	}
}

// serveServer answers GET /between/servers/{name}.
func serveServer(w http.ResponseWriter, r *http.Request, name string) error {
	h, ok := running.get(name)
	if !ok {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errUnknownServer(name)}
	}
	return writeJSON(w, handlerInfo(h))
}

// statusHandler is one handler on the status page.
type statusHandler struct {
	Info  HandlerInfo `json:"info"`
	Stats ServerStats `json:"stats"`
}

// serveStatus renders the live status page: the server-side render shows
// the current state at once (and without JavaScript); the inline script
// then refreshes it every 2 s from the same URL with ?format=json (a list
// of {"info": GET /between/servers/{name}, "stats": .../stats}), so the page
// works wherever it is mounted: on the admin API or through the
// between_status HTTP handler.
func serveStatus(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return methodNotAllowed(w, http.MethodGet, http.MethodHead)
	}
	list := []statusHandler{}
	for _, h := range running.all() {
		list = append(list, statusHandler{Info: handlerInfo(h), Stats: h.state.snapshot()})
	}
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.Query().Get("format") == "json" {
		return writeJSON(w, list)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	return statusPage.Execute(w, map[string]any{"Handlers": list, "Now": time.Now().UTC().Format(time.RFC3339)})
}

// StatusPage is an HTTP handler that serves Between's live status page (the
// page of GET /between/status on the admin API) on an HTTP site. Caddy's
// admin endpoint refuses requests a browser makes by navigation (it demands
// an allowed Origin or Referer when Sec-Fetch-* headers are present), so to
// look at the page in a browser, mount it on a site you protect yourself:
//
//	:8081 {
//		bind 127.0.0.1
//		between_status
//	}
type StatusPage struct{}

// CaddyModule returns the Caddy module information.
func (StatusPage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.between_status",
		New: func() caddy.Module { return new(StatusPage) },
	}
}

// ServeHTTP serves the page (and its JSON with ?format=json).
func (StatusPage) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if err := serveStatus(w, r); err != nil {
		if ae, ok := err.(caddy.APIError); ok {
			return caddyhttp.Error(ae.HTTPStatus, ae.Err)
		}
		return err
	}
	return nil
}

// UnmarshalCaddyfile parses the between_status directive, which takes no
// arguments:
//
//	between_status
func (*StatusPage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() || d.NextBlock(0) {
		return d.Err("between_status takes no arguments")
	}
	return nil
}

func init() {
	caddy.RegisterModule(StatusPage{})
	httpcaddyfile.RegisterHandlerDirective("between_status", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		p := new(StatusPage)
		return p, p.UnmarshalCaddyfile(h.Dispenser)
	})
	httpcaddyfile.RegisterDirectiveOrder("between_status", httpcaddyfile.Before, "respond")
}

// backendClass is the CSS class of a backend row: its state, or its health
// when ready.
func backendClass(b BackendStats) string {
	if b.State != "" && b.State != StateReady {
		return string(b.State)
	}
	if b.Stats.Live {
		return "up"
	}
	return "down"
}

// rate renders bytes per second.
func rate(n uint64) string {
	return humanBytes(n) + "/s"
}

// humanBytes renders a byte count with a binary unit.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return strconv.FormatFloat(float64(n)/float64(div), 'f', 1, 64) + " " + string("KMGTPE"[exp]) + "iB"
}

var (
	_ caddyhttp.MiddlewareHandler = (*StatusPage)(nil)
	_ caddyfile.Unmarshaler       = (*StatusPage)(nil)
)

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"class": backendClass, "rate": rate, "bytes": humanBytes, "addr": func(b BackendStats) string { return net.JoinHostPort(b.Host, b.Port) },
}).Parse(statusHTML))

const statusHTML = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Between status</title>
<noscript><meta http-equiv="refresh" content="2"></noscript>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.15em;margin:1.5em 0 .3em}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}
th,td{padding:.35em .7em;text-align:left;border-bottom:1px solid #e4e4e4}
th{background:#f0f0f0;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.05em .6em;border-radius:1em;color:#fff;font-weight:600;font-size:.85em}
.b-up{background:#2e9d43}.b-down{background:#d33}.b-drain{background:#e39a00}.b-maint{background:#6b7a8f}.b-ready{background:#2e9d43}
tr.down td{background:#fdecec} tr.drain td{background:#fff6e0} tr.maint td{background:#eef1f5}
.empty{color:#888;font-style:italic}
</style></head>
<body>
<h1>Between status</h1>
<div class="meta">updated <span id="updated">{{.Now}}</span> · refreshes every 2 s</div>
<div id="handlers">
{{range .Handlers}}<section class="handler" data-name="{{.Info.Name}}">
<h2>{{.Info.Name}}</h2>
<div class="meta">{{range .Info.Locations}}layer4 server {{.Server}} route {{.Route}} listen {{range .Listen}}{{.}} {{end}}· {{end}}
active {{.Stats.ActiveConnections}} · total {{.Stats.TotalConnections}} · refused {{.Stats.RefusedConnections}} · rx {{rate .Stats.RxSecond}} · tx {{rate .Stats.TxSecond}}</div>
<table><thead><tr><th>backend</th><th>health</th><th>state</th><th>active</th><th>total</th><th>refused</th><th>rx</th><th>tx</th><th>rx total</th><th>tx total</th></tr></thead><tbody>
{{range .Stats.Backends}}<tr class="backend {{class .}}" data-backend="{{addr .}}"><td>{{addr .}}</td>
<td>{{if .Stats.Live}}<span class="badge b-up">up</span>{{else}}<span class="badge b-down">down</span>{{end}}</td>
<td class="state"><span class="badge b-{{.State}}">{{.State}}</span></td>
<td class="n">{{.Stats.Active}}</td><td class="n">{{.Stats.Total}}</td><td class="n">{{.Stats.Refused}}</td>
<td class="n">{{rate .Stats.RxSecond}}</td><td class="n">{{rate .Stats.TxSecond}}</td><td class="n">{{bytes .Stats.Rx}}</td><td class="n">{{bytes .Stats.Tx}}</td></tr>
{{else}}<tr><td colspan="10" class="empty">no backends discovered</td></tr>{{end}}
</tbody></table></section>
{{else}}<p class="empty">no between handlers running</p>{{end}}
</div>
<script>
(function(){
"use strict";
function el(tag, cls, text){var e=document.createElement(tag);if(cls)e.className=cls;if(text!==undefined)e.textContent=String(text);return e;}
function bytes(n){var u=["B","KiB","MiB","GiB","TiB"],i=0;while(n>=1024&&i<u.length-1){n/=1024;i++;}return (i?n.toFixed(1):n)+" "+u[i];}
function badge(kind,text){return el("span","badge b-"+kind,text);}
function row(b){
  var s=b.stats,state=b.state||"ready",cls=state!=="ready"?state:(s.live?"up":"down");
  var tr=el("tr","backend "+cls);tr.dataset.backend=b.host.indexOf(":")>=0?"["+b.host+"]:"+b.port:b.host+":"+b.port;
  tr.appendChild(el("td","",tr.dataset.backend));
  var h=el("td");h.appendChild(badge(s.live?"up":"down",s.live?"up":"down"));tr.appendChild(h);
  var st=el("td","state");st.appendChild(badge(state,state));tr.appendChild(st);
  [s.active_connections,s.total_connections,s.refused_connections].forEach(function(v){tr.appendChild(el("td","n",v));});
  [bytes(s.rx_second)+"/s",bytes(s.tx_second)+"/s",bytes(s.rx),bytes(s.tx)].forEach(function(v){tr.appendChild(el("td","n",v));});
  return tr;
}
function section(info,stats){
  var sec=el("section","handler");sec.dataset.name=info.name;
  sec.appendChild(el("h2","",info.name));
  var where=(info.locations||[]).map(function(l){return "layer4 server "+l.layer4_server+" route "+l.route+" listen "+(l.listen||[]).join(" ");}).join(" · ");
  sec.appendChild(el("div","meta",(where?where+" · ":"")+"active "+stats.active_connections+" · total "+stats.total_connections+" · refused "+stats.refused_connections+" · rx "+bytes(stats.rx_second)+"/s · tx "+bytes(stats.tx_second)+"/s"));
  var t=el("table"),th=el("thead"),hr=el("tr");
  ["backend","health","state","active","total","refused","rx","tx","rx total","tx total"].forEach(function(c){hr.appendChild(el("th","",c));});
  th.appendChild(hr);t.appendChild(th);var tb=el("tbody");
  if(!stats.backends.length){var e=el("tr"),td=el("td","empty","no backends discovered");td.colSpan=10;e.appendChild(td);tb.appendChild(e);}
  stats.backends.forEach(function(b){tb.appendChild(row(b));});
  t.appendChild(tb);sec.appendChild(t);return sec;
}
function refresh(){
  fetch(location.pathname+"?format=json",{cache:"no-store"}).then(function(r){if(!r.ok)throw new Error("status "+r.status);return r.json();}).then(function(list){
    var root=document.getElementById("handlers"),frag=document.createDocumentFragment();
    if(!list.length)frag.appendChild(el("p","empty","no between handlers running"));
    list.forEach(function(h){frag.appendChild(section(h.info,h.stats));});
    root.replaceChildren(frag);
    document.getElementById("updated").textContent=new Date().toISOString();
  }).catch(function(e){document.getElementById("updated").textContent="refresh failed: "+e.message;});
}
setInterval(refresh,2000);
})();
</script>
</body></html>
`
