// Package gobetween is the Caddy config adapter "gobetween": it turns a
// gobetween configuration (TOML, or JSON with the same keys) into Caddy JSON
// with one layer4 server per [servers.X] section, each handled by Between's
// `between` handler. A key Between cannot honour is an error naming the key
// and the reason; nothing is dropped silently.
//
//	caddy run   --adapter gobetween --config gobetween.toml
//	caddy adapt --adapter gobetween --config gobetween.toml
package gobetween

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

func init() {
	caddyconfig.RegisterAdapter("gobetween", Adapter{})
}

// Adapter adapts gobetween configuration files to Caddy JSON.
type Adapter struct{}

// Adapt converts body, a gobetween config, to Caddy JSON. The format is JSON
// when options["filename"] ends in ".json" or the body starts with "{", and
// TOML otherwise.
func (Adapter) Adapt(body []byte, options map[string]any) ([]byte, []caddyconfig.Warning, error) {
	filename, _ := options["filename"].(string)
	doc, err := decode(body, filename)
	if err != nil {
		return nil, nil, err
	}
	a := &adapter{file: filename}
	cfg, err := a.convert(doc)
	if err != nil {
		return nil, a.warnings, err
	}
	out, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		return nil, a.warnings, err
	}
	return append(out, '\n'), a.warnings, nil
}

// decode reads TOML or JSON into a generic tree.
func decode(body []byte, filename string) (map[string]any, error) {
	doc := map[string]any{}
	trimmed := bytes.TrimSpace(body)
	if strings.EqualFold(filepath.Ext(filename), ".json") || bytes.HasPrefix(trimmed, []byte("{")) {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&doc); err != nil {
			return nil, fmt.Errorf("gobetween: reading JSON: %w", err)
		}
		return doc, nil
	}
	if _, err := toml.Decode(string(body), &doc); err != nil {
		return nil, fmt.Errorf("gobetween: reading TOML: %w", err)
	}
	return doc, nil
}

type adapter struct {
	file     string
	warnings []caddyconfig.Warning
}

func (a *adapter) warn(key, msg string) {
	a.warnings = append(a.warnings, caddyconfig.Warning{File: a.file, Directive: key, Message: msg})
}

// table is one section of the config; it remembers which keys were read so
// that finish can reject the rest by name.
type table struct {
	path string
	m    map[string]any
	used map[string]bool
}

func newTable(path string, m map[string]any) *table {
	return &table{path: path, m: m, used: map[string]bool{}}
}

func (t *table) key(k string) string {
	if t.path == "" {
		return k
	}
	return t.path + "." + k
}

func (t *table) has(k string) bool {
	_, ok := t.m[k]
	return ok
}

func (t *table) get(k string) (any, bool) {
	v, ok := t.m[k]
	if ok {
		t.used[k] = true
	}
	return v, ok
}

func (t *table) str(k string) (string, error) {
	v, ok := t.get(k)
	if !ok {
		return "", nil
	}
	s, isStr := v.(string)
	if !isStr {
		return "", fmt.Errorf("%s: want a string, got %v", t.key(k), v)
	}
	return s, nil
}

func (t *table) boolean(k string) (bool, error) {
	v, ok := t.get(k)
	if !ok {
		return false, nil
	}
	b, isBool := v.(bool)
	if !isBool {
		return false, fmt.Errorf("%s: want true or false, got %v", t.key(k), v)
	}
	return b, nil
}

func (t *table) integer(k string) (int64, bool, error) {
	v, ok := t.get(k)
	if !ok {
		return 0, false, nil
	}
	switch n := v.(type) {
	case int64:
		return n, true, nil
	case json.Number:
		i, err := n.Int64()
		if err != nil {
			return 0, false, fmt.Errorf("%s: want an integer, got %s", t.key(k), n)
		}
		return i, true, nil
	case float64:
		if n == math.Trunc(n) {
			return int64(n), true, nil
		}
	}
	return 0, false, fmt.Errorf("%s: want an integer, got %v", t.key(k), v)
}

func (t *table) strs(k string) ([]string, error) {
	v, ok := t.get(k)
	if !ok {
		return nil, nil
	}
	list, isList := v.([]any)
	if !isList {
		return nil, fmt.Errorf("%s: want a list of strings, got %v", t.key(k), v)
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		s, isStr := e.(string)
		if !isStr {
			return nil, fmt.Errorf("%s: want a list of strings, got element %v", t.key(k), e)
		}
		out = append(out, s)
	}
	return out, nil
}

// duration reads a gobetween duration ("5s", "1m", "0") and returns it in
// Caddy's form, or "" when absent or zero (zero means no limit in both).
func (t *table) duration(k string) (string, error) {
	s, err := t.str(k)
	if err != nil || s == "" {
		return "", err
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return "", fmt.Errorf("%s: %q is not a duration like \"5s\" or \"500ms\"", t.key(k), s)
	}
	if d < 0 {
		return "", fmt.Errorf("%s: %q is negative", t.key(k), s)
	}
	if d == 0 {
		return "", nil
	}
	return s, nil
}

func (t *table) sub(k string) (*table, error) {
	v, ok := t.get(k)
	if !ok {
		return nil, nil
	}
	m, isMap := v.(map[string]any)
	if !isMap {
		return nil, fmt.Errorf("%s: want a section (table), got %v", t.key(k), v)
	}
	return newTable(t.key(k), m), nil
}

// finish rejects every key that was not read.
func (t *table) finish(why string) error {
	var unknown []string
	for k := range t.m {
		if !t.used[k] {
			unknown = append(unknown, t.key(k))
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	if why == "" {
		why = "not a gobetween key that Between knows"
	}
	return fmt.Errorf("%s: %s", strings.Join(unknown, ", "), why)
}

// copyKeys copies the listed keys as they are (strings, numbers, lists,
// booleans) into out.
func (t *table) copyKeys(out map[string]any, keys ...string) {
	for _, k := range keys {
		if v, ok := t.get(k); ok {
			if n, isNum := v.(json.Number); isNum {
				if i, err := n.Int64(); err == nil {
					v = i
				}
			}
			out[k] = v
		}
	}
}

func (a *adapter) convert(doc map[string]any) (map[string]any, error) {
	root := newTable("", doc)
	cfg := map[string]any{}
	apps := map[string]any{}

	if err := a.logging(root, cfg); err != nil {
		return nil, err
	}
	if err := a.api(root, cfg); err != nil {
		return nil, err
	}
	if err := a.adminListener(root, "metrics", "the metrics at /metrics"); err != nil {
		return nil, err
	}
	if err := a.adminListener(root, "profiler", "pprof at /debug/pprof/"); err != nil {
		return nil, err
	}
	defaults, err := root.sub("defaults")
	if err != nil {
		return nil, err
	}
	var defaultOpts map[string]any
	if defaults != nil {
		defaultOpts = map[string]any{}
		if err := connectionOptions(defaults, defaultOpts); err != nil {
			return nil, err
		}
		if err := defaults.finish("not a [defaults] key (only max_connections and the three *_timeout keys)"); err != nil {
			return nil, err
		}
	}
	tlsApp := &tlsApp{}
	if err := a.acme(root, tlsApp); err != nil {
		return nil, err
	}
	serversT, err := root.sub("servers")
	if err != nil {
		return nil, err
	}
	servers := map[string]any{}
	if serversT != nil {
		names := make([]string, 0, len(serversT.m))
		for name := range serversT.m {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			st, err := serversT.sub(name)
			if err != nil {
				return nil, err
			}
			srv, parts, warnings, err := ConvertServer(name, st.m, ServerOptions{Defaults: defaultOpts})
			for _, w := range warnings {
				w.File = a.file
				a.warnings = append(a.warnings, w)
			}
			if err != nil {
				return nil, err
			}
			if err := tlsApp.add(name, parts); err != nil {
				return nil, err
			}
			servers[name] = srv
		}
	}
	if err := root.finish("not a gobetween section"); err != nil {
		return nil, err
	}
	if len(servers) > 0 {
		apps["layer4"] = map[string]any{"servers": servers}
	}
	if t := tlsApp.json(); t != nil {
		apps["tls"] = t
	}
	if len(apps) > 0 {
		cfg["apps"] = apps
	}
	return cfg, nil
}

func (a *adapter) logging(root *table, cfg map[string]any) error {
	t, err := root.sub("logging")
	if err != nil || t == nil {
		return err
	}
	log := map[string]any{}
	level, err := t.str("level")
	if err != nil {
		return err
	}
	switch strings.ToLower(level) {
	case "":
	case "debug", "info", "warn", "error":
		log["level"] = strings.ToUpper(level)
	default:
		return fmt.Errorf("logging.level: %q is not one of debug, info, warn, error", level)
	}
	output, err := t.str("output")
	if err != nil {
		return err
	}
	switch output {
	case "":
	case "stdout", "stderr":
		log["writer"] = map[string]any{"output": output}
	default:
		log["writer"] = map[string]any{"output": "file", "filename": output}
	}
	if err := t.finish("not a [logging] key (level, output)"); err != nil {
		return err
	}
	if len(log) > 0 {
		cfg["logging"] = map[string]any{"logs": map[string]any{"default": log}}
	}
	return nil
}

func (a *adapter) api(root *table, cfg map[string]any) error {
	t, err := root.sub("api")
	if err != nil || t == nil {
		return err
	}
	enabled, err := t.boolean("enabled")
	if err != nil {
		return err
	}
	bind, err := t.str("bind")
	if err != nil {
		return err
	}
	if t.has("basic_auth") {
		t.get("basic_auth")
		return fmt.Errorf("%s: Caddy's admin endpoint (which serves the API) has no HTTP basic auth; bind it to localhost or a unix socket, or put a reverse_proxy with basic_auth in front of it", t.key("basic_auth"))
	}
	if t.has("tls") {
		t.get("tls")
		return fmt.Errorf("%s: Caddy's admin endpoint cannot serve HTTPS with a given certificate (only its remote admin with client certificates, admin.remote); bind it to localhost or put a reverse_proxy with TLS in front of it", t.key("tls"))
	}
	cors, err := t.boolean("cors")
	if err != nil {
		return err
	}
	if cors {
		return fmt.Errorf("%s: Caddy's admin endpoint does not send CORS headers (it allows the origins in admin.origins instead)", t.key("cors"))
	}
	if err := t.finish("not an [api] key (enabled, bind, basic_auth, tls, cors)"); err != nil {
		return err
	}
	admin := map[string]any{}
	if !enabled {
		admin["disabled"] = true
	} else if bind != "" {
		if _, _, err := net.SplitHostPort(bind); err != nil {
			return fmt.Errorf("%s: %q is not host:port", t.key("bind"), bind)
		}
		admin["listen"] = bind
	}
	cfg["admin"] = admin
	return nil
}

// adminListener handles [metrics] and [profiler]: gobetween served each on
// a listener of its own; Caddy serves both on the admin endpoint (metrics at
// /metrics, pprof at /debug/pprof/), so an enabled one is a warning saying
// where to find it.
func (a *adapter) adminListener(root *table, section, servedAt string) error {
	t, err := root.sub(section)
	if err != nil || t == nil {
		return err
	}
	enabled, err := t.boolean("enabled")
	if err != nil {
		return err
	}
	bind, err := t.str("bind")
	if err != nil {
		return err
	}
	if err := t.finish(fmt.Sprintf("not a [%s] key (enabled, bind)", section)); err != nil {
		return err
	}
	if enabled {
		a.warn(section, fmt.Sprintf("Caddy serves %s on the admin endpoint ([api] bind), not on %q", servedAt, bind))
	}
	return nil
}

// tlsApp collects what the tls app needs.
type tlsApp struct {
	loadFiles      []any
	policies       []any
	acmeIssuer     map[string]any
	storage        map[string]any
	noTickets      bool
	acmeConfigured bool
}

func (t *tlsApp) json() map[string]any {
	out := map[string]any{}
	if len(t.loadFiles) > 0 {
		out["certificates"] = map[string]any{"load_files": t.loadFiles}
	}
	if len(t.policies) > 0 {
		out["automation"] = map[string]any{"policies": t.policies}
	}
	if t.noTickets {
		out["session_tickets"] = map[string]any{"disabled": true}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// add takes in what server name needs in the tls app: its certificate
// files, an automation policy with the [acme] issuer for its ACME names, and
// disabled session tickets.
func (t *tlsApp) add(name string, parts *ServerTLS) error {
	if parts == nil {
		return nil
	}
	for _, f := range parts.LoadFiles {
		t.loadFiles = append(t.loadFiles, f)
	}
	if len(parts.ACMEHosts) > 0 {
		if !t.acmeConfigured {
			return fmt.Errorf("servers.%s.tls.acme_hosts: needs an [acme] section", name)
		}
		p := map[string]any{"subjects": parts.ACMEHosts, "issuers": []any{t.acmeIssuer}}
		if t.storage != nil {
			p["storage"] = t.storage
		}
		t.policies = append(t.policies, p)
	}
	if parts.NoSessionTickets {
		t.noTickets = true
	}
	return nil
}

func (a *adapter) acme(root *table, app *tlsApp) error {
	t, err := root.sub("acme")
	if err != nil || t == nil {
		return err
	}
	app.acmeConfigured = true
	issuer := map[string]any{"module": "acme"}
	challenge, err := t.str("challenge")
	if err != nil {
		return err
	}
	httpBind, err := t.str("http_bind")
	if err != nil {
		return err
	}
	cacheDir, err := t.str("cache_dir")
	if err != nil {
		return err
	}
	switch challenge {
	case "http":
		ch := map[string]any{"tls-alpn": map[string]any{"disabled": true}}
		if httpBind != "" {
			host, port, err := net.SplitHostPort(httpBind)
			if err != nil {
				return fmt.Errorf("%s: %q is not host:port", t.key("http_bind"), httpBind)
			}
			var p int
			if _, err := fmt.Sscan(port, &p); err != nil || p <= 0 || p > 65535 {
				return fmt.Errorf("%s: %q has no valid port", t.key("http_bind"), httpBind)
			}
			ch["http"] = map[string]any{"alternate_port": p}
			if host != "" && host != "0.0.0.0" && host != "::" {
				ch["bind_host"] = host
			}
		}
		issuer["challenges"] = ch
	case "sni", "tls", "":
		if httpBind != "" {
			return fmt.Errorf("%s: only used with challenge = \"http\"", t.key("http_bind"))
		}
		if challenge != "" {
			issuer["challenges"] = map[string]any{"http": map[string]any{"disabled": true}}
		}
	default:
		return fmt.Errorf("%s: %q is not \"http\", \"sni\" or \"tls\"", t.key("challenge"), challenge)
	}
	if cacheDir != "" {
		app.storage = map[string]any{"module": "file_system", "root": cacheDir}
	}
	app.acmeIssuer = issuer
	return t.finish("not an [acme] key (challenge, http_bind, cache_dir)")
}

var connectionKeys = []string{"client_idle_timeout", "backend_idle_timeout", "backend_connection_timeout"}

// connectionOptions reads gobetween's ConnectionOptions into out.
func connectionOptions(t *table, out map[string]any) error {
	n, ok, err := t.integer("max_connections")
	if err != nil {
		return err
	}
	if ok {
		if n < 0 {
			return fmt.Errorf("%s: must not be negative", t.key("max_connections"))
		}
		if n > 0 {
			out["max_connections"] = n
		} else {
			delete(out, "max_connections")
		}
	}
	for _, k := range connectionKeys {
		if !t.has(k) {
			continue
		}
		d, err := t.duration(k)
		if err != nil {
			return err
		}
		if d != "" {
			out[k] = d
		} else {
			delete(out, k)
		}
	}
	return nil
}

var balancePolicies = map[string]bool{
	"weight": true, "leastconn": true, "roundrobin": true, "iphash": true,
	"iphash1": true, "leastbandwidth": true,
}

// ServerOptions says how ConvertServer fits a server into its config.
type ServerOptions struct {
	// Defaults are handler fields merged into the server's between handler
	// before its own keys: the adapter's [defaults] section, converted
	// (max_connections and the *_timeout keys in the handler's form).
	Defaults map[string]any
	// CertTag tags the certificate files of a protocol = "tls" server with
	// cert_path and key_path, and its tls handler selects them by it;
	// "gobetween-NAME" when empty.
	CertTag string
}

// ServerTLS is what a protocol = "tls" server needs outside its layer4
// server, in Caddy's tls app.
type ServerTLS struct {
	// LoadFiles are entries for apps.tls.certificates.load_files (certificate,
	// key, tags), tagged with the server's certificate tag.
	LoadFiles []map[string]any
	// ACMEHosts are the names (tls.acme_hosts) to get certificates for by
	// ACME; the caller arranges their management.
	ACMEHosts []string
	// Policy is the tls handler's connection policy inside the returned
	// layer4 server (the same map, so the caller may add to it).
	Policy map[string]any
	// NoSessionTickets is tls.session_tickets = false: session tickets off in
	// the tls app, for every server.
	NoSessionTickets bool
}

// ConvertServer converts one gobetween server, the table [servers.NAME] as a
// generic tree (TOML or JSON decoded), to the layer4 server the adapter
// makes of it: listening on between+tcp/ or between+udp/ at bind, with a tls
// handler first when protocol = "tls", then a between handler named name.
// What a tls server needs in the tls app is returned apart (nil for other
// protocols). Errors and warnings name the gobetween key as
// servers.NAME.KEY. The adapter converts every server with it.
func ConvertServer(name string, server map[string]any, opts ServerOptions) (map[string]any, *ServerTLS, []caddyconfig.Warning, error) {
	a := &adapter{}
	var t *table
	if server != nil {
		t = newTable("servers."+name, server)
	}
	srv, parts, err := a.server(name, t, opts)
	if err != nil {
		return nil, nil, a.warnings, err
	}
	return srv, parts, a.warnings, nil
}

func (a *adapter) server(name string, t *table, opts ServerOptions) (map[string]any, *ServerTLS, error) {
	if t == nil {
		return nil, nil, fmt.Errorf("servers.%s: empty", name)
	}
	h := map[string]any{"handler": "between", "name": name}
	for k, v := range opts.Defaults {
		h[k] = v
	}
	if err := connectionOptions(t, h); err != nil {
		return nil, nil, err
	}
	bind, err := t.str("bind")
	if err != nil {
		return nil, nil, err
	}
	if bind == "" {
		return nil, nil, fmt.Errorf("%s: required (\"host:port\")", t.key("bind"))
	}
	if _, _, err := net.SplitHostPort(bind); err != nil {
		return nil, nil, fmt.Errorf("%s: %q is not host:port", t.key("bind"), bind)
	}
	protocol, err := t.str("protocol")
	if err != nil {
		return nil, nil, err
	}
	network := "between+tcp/"
	switch protocol {
	case "", "tcp", "tls":
		if t.has("udp") {
			t.get("udp")
			return nil, nil, fmt.Errorf("%s: only used with protocol = \"udp\"", t.key("udp"))
		}
	case "udp":
		network = "between+udp/"
		if err := a.udp(t, h); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, fmt.Errorf("%s: %q is not \"tcp\", \"tls\" or \"udp\"", t.key("protocol"), protocol)
	}
	if err := balance(t, h); err != nil {
		return nil, nil, err
	}
	var handlers []any
	var parts *ServerTLS
	tlsT, err := t.sub("tls")
	if err != nil {
		return nil, nil, err
	}
	if protocol == "tls" {
		if tlsT == nil {
			return nil, nil, fmt.Errorf("%s: required with protocol = \"tls\" (cert_path and key_path, or acme_hosts)", t.key("tls"))
		}
		tag := opts.CertTag
		if tag == "" {
			tag = "gobetween-" + name
		}
		th, p, err := a.serverTLS(tag, tlsT)
		if err != nil {
			return nil, nil, err
		}
		handlers = append(handlers, th)
		parts = p
	} else if tlsT != nil {
		return nil, nil, fmt.Errorf("%s: only used with protocol = \"tls\"", t.key("tls"))
	}
	if err := a.backendsTLS(t, h); err != nil {
		return nil, nil, err
	}
	if s, err := t.sub("sni"); err != nil {
		return nil, nil, err
	} else if s != nil {
		sni := map[string]any{}
		rt, err := s.duration("read_timeout")
		if err != nil {
			return nil, nil, err
		}
		if rt != "" {
			sni["read_timeout"] = rt
		}
		s.copyKeys(sni, "hostname_matching_strategy", "unexpected_hostname_strategy")
		if err := s.finish("not an sni key (read_timeout, hostname_matching_strategy, unexpected_hostname_strategy)"); err != nil {
			return nil, nil, err
		}
		h["sni"] = sni
	}
	if s, err := t.sub("access"); err != nil {
		return nil, nil, err
	} else if s != nil {
		acc := map[string]any{}
		def, err := s.str("default")
		if err != nil {
			return nil, nil, err
		}
		if def != "" {
			acc["default"] = def
		}
		rules, err := s.strs("rules")
		if err != nil {
			return nil, nil, err
		}
		if len(rules) > 0 {
			acc["rules"] = rules
		}
		if err := s.finish("not an access key (default, rules)"); err != nil {
			return nil, nil, err
		}
		h["access"] = acc
	}
	if s, err := t.sub("proxy_protocol"); err != nil {
		return nil, nil, err
	} else if s != nil {
		pp := map[string]any{}
		v, err := s.str("version")
		if err != nil {
			return nil, nil, err
		}
		if v != "" {
			pp["version"] = v
		}
		if err := s.finish("not a proxy_protocol key (version)"); err != nil {
			return nil, nil, err
		}
		h["proxy_protocol"] = pp
	}
	d, err := t.sub("discovery")
	if err != nil {
		return nil, nil, err
	}
	if d == nil {
		return nil, nil, fmt.Errorf("%s: required", t.key("discovery"))
	}
	disc, err := discovery(d)
	if err != nil {
		return nil, nil, err
	}
	h["discovery"] = disc
	if hc, err := t.sub("healthcheck"); err != nil {
		return nil, nil, err
	} else if hc != nil {
		check, err := healthcheck(hc)
		if err != nil {
			return nil, nil, err
		}
		if protocol == "udp" && check != nil && check["kind"] == "ping" {
			return nil, nil, fmt.Errorf("%s: \"ping\" checks a backend with a TCP connect, which says nothing about a UDP service (gobetween refuses it too); use kind = \"probe\" with probe_protocol = \"udp\", or \"exec\"", hc.key("kind"))
		}
		if check != nil {
			h["healthcheck"] = check
		}
	}
	if err := t.finish("not a server key that Between knows"); err != nil {
		return nil, nil, err
	}
	handlers = append(handlers, h)
	return map[string]any{
		"listen": []string{network + bind},
		"routes": []any{map[string]any{"handle": handlers}},
	}, parts, nil
}

func balance(t *table, h map[string]any) error {
	v, ok := t.get("balance")
	if !ok {
		return nil
	}
	kind, isStr := v.(string)
	if m, isMap := v.(map[string]any); isMap {
		// some gobetween versions write balance as a table with a kind
		bt := newTable(t.key("balance"), m)
		k, err := bt.str("kind")
		if err != nil {
			return err
		}
		if err := bt.finish("not supported by Between's balancers (only kind)"); err != nil {
			return err
		}
		kind, isStr = k, true
	}
	if !isStr {
		return fmt.Errorf("%s: want a policy name, got %v", t.key("balance"), v)
	}
	if kind == "" {
		return nil
	}
	if !balancePolicies[kind] {
		return fmt.Errorf("%s: %q is not one of weight, leastconn, roundrobin, iphash, iphash1, leastbandwidth", t.key("balance"), kind)
	}
	h["balance"] = map[string]any{"policy": kind}
	return nil
}

var tlsVersions = map[string]string{"ssl3": "", "tls1": "tls1.0", "tls1.0": "tls1.0", "tls1.1": "tls1.1", "tls1.2": "tls1.2", "tls1.3": "tls1.3"}

func tlsVersion(t *table, k string) (string, error) {
	v, err := t.str(k)
	if err != nil || v == "" {
		return "", err
	}
	out, ok := tlsVersions[v]
	if !ok || out == "" {
		return "", fmt.Errorf("%s: %q is not one of tls1, tls1.1, tls1.2, tls1.3 (Go has no SSLv3)", t.key(k), v)
	}
	return out, nil
}

// serverTLS reads a server's tls section into the tls handler and what the
// tls app needs; certificate files are tagged tag.
func (a *adapter) serverTLS(tag string, t *table) (map[string]any, *ServerTLS, error) {
	policy := map[string]any{}
	parts := &ServerTLS{Policy: policy}
	certPath, err := t.str("cert_path")
	if err != nil {
		return nil, nil, err
	}
	keyPath, err := t.str("key_path")
	if err != nil {
		return nil, nil, err
	}
	hosts, err := t.strs("acme_hosts")
	if err != nil {
		return nil, nil, err
	}
	switch {
	case certPath != "" && keyPath != "":
		if len(hosts) > 0 {
			return nil, nil, fmt.Errorf("%s: use either acme_hosts or cert_path/key_path", t.key("acme_hosts"))
		}
		parts.LoadFiles = append(parts.LoadFiles, map[string]any{"certificate": certPath, "key": keyPath, "tags": []string{tag}})
		policy["certificate_selection"] = map[string]any{"any_tag": []string{tag}}
	case certPath != "" || keyPath != "":
		return nil, nil, fmt.Errorf("%s: cert_path and key_path go together", t.key("cert_path"))
	case len(hosts) > 0:
		parts.ACMEHosts = hosts
	default:
		return nil, nil, fmt.Errorf("%s: needs cert_path and key_path, or acme_hosts", t.path)
	}
	minV, err := tlsVersion(t, "min_version")
	if err != nil {
		return nil, nil, err
	}
	if minV != "" {
		policy["protocol_min"] = minV
	}
	maxV, err := tlsVersion(t, "max_version")
	if err != nil {
		return nil, nil, err
	}
	if maxV != "" {
		policy["protocol_max"] = maxV
	}
	ciphers, err := t.strs("ciphers")
	if err != nil {
		return nil, nil, err
	}
	if len(ciphers) > 0 {
		policy["cipher_suites"] = ciphers
	}
	if prefer, err := t.boolean("prefer_server_ciphers"); err != nil {
		return nil, nil, err
	} else if prefer {
		a.warn(t.key("prefer_server_ciphers"), "Go's TLS always picks the cipher suite itself; the key has no effect")
	}
	if t.has("session_tickets") {
		tickets, err := t.boolean("session_tickets")
		if err != nil {
			return nil, nil, err
		}
		if !tickets {
			parts.NoSessionTickets = true
			a.warn(t.key("session_tickets"), "false disables session tickets in Caddy's tls app, for every server")
		}
	}
	if err := t.finish("not a tls key (acme_hosts, cert_path, key_path, ciphers, prefer_server_ciphers, min_version, max_version, session_tickets)"); err != nil {
		return nil, nil, err
	}
	return map[string]any{"handler": "tls", "connection_policies": []any{policy}}, parts, nil
}

func (a *adapter) backendsTLS(st *table, h map[string]any) error {
	t, err := st.sub("backends_tls")
	if err != nil || t == nil {
		return err
	}
	out := map[string]any{}
	t.copyKeys(out, "ignore_verify", "root_ca_cert_path", "cert_path", "key_path", "ciphers")
	for _, k := range []string{"min_version", "max_version"} {
		v, err := tlsVersion(t, k)
		if err != nil {
			return err
		}
		switch v {
		case "":
		case "tls1.2", "tls1.3":
			out[k] = strings.TrimPrefix(v, "tls") // Between's backends_tls says "1.2", "1.3"
		default:
			return fmt.Errorf("%s: %q: Between dials backends with TLS 1.2 or 1.3 only", t.key(k), v)
		}
	}
	if prefer, err := t.boolean("prefer_server_ciphers"); err != nil {
		return err
	} else if prefer {
		a.warn(t.key("prefer_server_ciphers"), "a client-side setting with no meaning for backend connections; no effect")
	}
	if tickets, err := t.boolean("session_tickets"); err != nil {
		return err
	} else if tickets {
		return fmt.Errorf("%s: Between does not resume TLS sessions to backends", t.key("session_tickets"))
	}
	if err := t.finish("not a backends_tls key"); err != nil {
		return err
	}
	h["backends_tls"] = out
	return nil
}

var discoveryKeys = map[string][]string{
	"static":    {"static_list"},
	"srv":       {"srv_lookup_server", "srv_lookup_pattern", "srv_dns_protocol"},
	"docker":    {"docker_endpoint", "docker_container_label", "docker_container_private_port", "docker_container_host_env_var", "docker_network", "docker_tls_enabled", "docker_tls_cert_path", "docker_tls_key_path", "docker_tls_cacert_path"},
	"json":      {"json_endpoint", "json_host_pattern", "json_port_pattern", "json_weight_pattern", "json_priority_pattern", "json_sni_pattern", "json_max_connections_pattern"},
	"exec":      {"exec_command"},
	"plaintext": {"plaintext_endpoint", "plaintext_regex_pattern"},
	"consul":    {"consul_host", "consul_service_name", "consul_service_tag", "consul_service_passing_only", "consul_datacenter", "consul_auth_username", "consul_auth_password", "consul_acl_token", "consul_tls_enabled", "consul_tls_cert_path", "consul_tls_key_path", "consul_tls_cacert_path"},
	"lxd":       {"lxd_server_address", "lxd_server_remote_name", "lxd_server_remote_password", "lxd_config_directory", "lxd_generate_client_certs", "lxd_accept_server_cert", "lxd_container_label_key", "lxd_container_label_value", "lxd_container_port", "lxd_container_port_key", "lxd_container_interface", "lxd_container_interface_key", "lxd_container_sni_key", "lxd_container_address_type"},
	"etcd":      {"etcd_endpoints", "etcd_prefix", "etcd_username", "etcd_password", "etcd_tls_enabled", "etcd_tls_cert_path", "etcd_tls_key_path", "etcd_tls_cacert_path"},
}

// copyDurations copies the duration keys that are set into out as Caddy
// durations ("0" and "" are left out: no limit).
func (t *table) copyDurations(out map[string]any, keys ...string) error {
	for _, k := range keys {
		if !t.has(k) {
			continue
		}
		d, err := t.duration(k)
		if err != nil {
			return err
		}
		if d != "" {
			out[k] = d
		}
	}
	return nil
}

func discovery(t *table) (map[string]any, error) {
	kind, err := t.str("kind")
	if err != nil {
		return nil, err
	}
	keys, ok := discoveryKeys[kind]
	if !ok {
		return nil, fmt.Errorf("%s: %q is not a discovery kind (static, srv, docker, json, exec, plaintext, consul, lxd, etcd)", t.key("kind"), kind)
	}
	out := map[string]any{"kind": kind}
	if err := t.copyDurations(out, "interval", "timeout"); err != nil {
		return nil, err
	}
	t.copyKeys(out, "failpolicy")
	t.copyKeys(out, keys...)
	if err := t.finish(fmt.Sprintf("not a key of discovery kind %q", kind)); err != nil {
		return nil, err
	}
	return out, nil
}

var healthcheckKeys = map[string][]string{
	"ping":  {},
	"probe": {"probe_protocol", "probe_strategy", "probe_send", "probe_recv", "probe_recv_len"},
	"exec":  {"exec_expected_positive_output", "exec_expected_negative_output"},
	"http":  {"http_path", "http_scheme", "http_host", "http_expected_status"},
}

func healthcheck(t *table) (map[string]any, error) {
	kind, err := t.str("kind")
	if err != nil {
		return nil, err
	}
	if kind == "none" {
		t.used = map[string]bool{"kind": true}
		// gobetween ignores the other keys of a disabled check; so do we, by name
		for k := range t.m {
			t.used[k] = true
		}
		return nil, nil
	}
	keys, ok := healthcheckKeys[kind]
	if !ok {
		return nil, fmt.Errorf("%s: %q is not a health check kind (ping, probe, exec, http, none)", t.key("kind"), kind)
	}
	out := map[string]any{"kind": kind}
	if err := t.copyDurations(out, "interval", "timeout"); err != nil {
		return nil, err
	}
	t.copyKeys(out, "passes", "fails", "initial_status", "port")
	t.copyKeys(out, keys...)
	if kind == "exec" && t.has("exec_command") {
		v, _ := t.get("exec_command")
		switch c := v.(type) {
		case string:
			// gobetween: one path, run with the backend's host and port
			out["exec_command"] = []string{c}
		default:
			cmd, err := t.strs("exec_command")
			if err != nil {
				return nil, err
			}
			out["exec_command"] = cmd
		}
	}
	if err := t.finish(fmt.Sprintf("not a key of health check kind %q", kind)); err != nil {
		return nil, err
	}
	return out, nil
}

// udp reads the settings of a protocol = "udp" server into the handler's udp
// block and applies gobetween's rules for UDP servers: no TLS or PROXY
// protocol keys, and at least one limit that ends a session.
func (a *adapter) udp(st *table, h map[string]any) error {
	for _, k := range []string{"backends_tls", "proxy_protocol", "sni"} {
		if st.has(k) {
			st.get(k)
			return fmt.Errorf("%s: not used with protocol = \"udp\" (gobetween has no TLS or PROXY protocol on UDP)", st.key(k))
		}
	}
	out := map[string]any{}
	t, err := st.sub("udp")
	if err != nil {
		return err
	}
	if t != nil {
		// max_sessions is Between's: gobetween had no cap on UDP clients
		for _, k := range []string{"max_requests", "max_responses", "max_sessions"} {
			n, ok, err := t.integer(k)
			if err != nil {
				return err
			}
			if n < 0 {
				return fmt.Errorf("%s: must not be negative", t.key(k))
			}
			if ok && n > 0 {
				out[k] = n
			}
		}
		transparent, err := t.boolean("transparent")
		if err != nil {
			return err
		}
		if transparent {
			out["transparent"] = true
		}
		if err := t.finish("not a udp key (max_requests, max_responses, transparent, and Between's max_sessions)"); err != nil {
			return err
		}
	}
	_, requests := out["max_requests"]
	_, responses := out["max_responses"]
	_, clientIdle := h["client_idle_timeout"]
	_, backendIdle := h["backend_idle_timeout"]
	if !requests && !responses && !clientIdle && !backendIdle {
		return fmt.Errorf("%s: protocol = \"udp\" needs at least one of udp.max_requests, udp.max_responses, client_idle_timeout, backend_idle_timeout (as in gobetween), else its sessions never end", st.key("udp"))
	}
	if len(out) > 0 {
		h["udp"] = out
	}
	return nil
}
