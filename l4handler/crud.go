package l4handler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-between/between/gobetween"
)

// ServerRequest is the body of POST and PUT /between/servers/{name} in
// Between's form: where to listen, the protocol, the TLS certificate when
// the protocol is tls, and every field of the between handler (balance,
// discovery, healthcheck, ...) beside them. A body with "bind" and no
// "listen" is in gobetween's form instead (a [servers.NAME] table as JSON)
// and is converted by the gobetween adapter's gobetween.ConvertServer.
type ServerRequest struct {
	// Caddy network addresses; between+tcp/ADDRESS is recommended. With
	// protocol udp a bare host:port means between+udp/host:port, and each
	// address must be a UDP one (between+udp/, udp/, udp4/, udp6/).
	Listen []string `json:"listen"`
	// "tcp" (default), "tls" (TLS termination with caddy-l4's tls handler)
	// or "udp" (datagrams; the handler's udp field and idle timeouts say
	// when a virtual session ends).
	Protocol string `json:"protocol,omitempty"`
	// With protocol tls: a certificate from files, or names to get one
	// for by ACME (handed to the tls app like apps.between.acme_hosts).
	TLS *ServerTLS `json:"tls,omitempty"`
}

// ServerTLS is the certificate of a server created through the admin API.
type ServerTLS struct {
	CertPath  string   `json:"cert_path,omitempty"`  // PEM certificate chain
	KeyPath   string   `json:"key_path,omitempty"`   // PEM private key
	ACMEHosts []string `json:"acme_hosts,omitempty"` // names to manage with ACME
}

// serveServerChange handles POST (create), PUT (replace) and DELETE of
// /between/servers/{name}. Each is one change of Caddy's config on
// apps.layer4.servers.{name}, loaded as a whole like POST /load: atomic (an
// invalid result leaves the running config alone), persisted by Caddy's
// autosave and visible under /config/.
func serveServerChange(w http.ResponseWriter, r *http.Request, name string) error {
	cfg, err := currentConfig(r)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: fmt.Errorf("reading the running config: %w", err)}
	}
	servers := layer4Servers(cfg)
	_, exists := servers[name]
	switch r.Method {
	case http.MethodPost, http.MethodPut:
		if r.Method == http.MethodPost && exists {
			return caddy.APIError{HTTPStatus: http.StatusConflict, Err: fmt.Errorf("layer4 server %q exists: replace it with PUT", name)}
		}
		if r.Method == http.MethodPut && !exists {
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errUnknownServer(name)}
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxServerBody))
		if err != nil {
			return bodyError(err)
		}
		srv, files, acme, err := buildServer(name, body)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
		}
		releaseTLS(cfg, name, servers[name])
		servers[name] = srv
		claimTLS(cfg, files, acme)
	case http.MethodDelete:
		if !exists || !holdsHandler(servers[name], name) {
			if h, ok := running.get(name); ok {
				return caddy.APIError{HTTPStatus: http.StatusConflict, Err: fmt.Errorf("between handler %q lives in %s: change it through /config/", name, describe(h.app.locations(name)))}
			}
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errUnknownServer(name)}
		}
		releaseTLS(cfg, name, servers[name])
		delete(servers, name)
	default:
		return methodNotAllowed(w, http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete)
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	if err := caddy.Load(out, false); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}
	switch r.Method {
	case http.MethodPost:
		w.WriteHeader(http.StatusCreated)
		return writeJSON(w, servers[name])
	case http.MethodPut:
		return writeJSON(w, servers[name])
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// buildServer turns a ServerRequest into a layer4 server with one route:
// caddy-l4's tls handler when the protocol is tls, then the between handler
// named name with the request's handler fields. It returns the ACME names.
// A body in gobetween's form (with "bind", without "listen") is converted
// by buildGobetweenServer.
func buildServer(name string, body []byte) (srv map[string]any, files map[string]any, acme []string, err error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, nil, nil, fmt.Errorf("body: %w", err)
	}
	_, hasBind := fields["bind"]
	_, hasListen := fields["listen"]
	switch {
	case hasBind && hasListen:
		return nil, nil, nil, errors.New(`fields "bind" (gobetween's server form) and "listen" (Between's form): give only one of them`)
	case hasBind:
		return buildGobetweenServer(name, body)
	}
	var req ServerRequest
	top := map[string]json.RawMessage{}
	for _, k := range []string{"listen", "protocol", "tls"} {
		if v, ok := fields[k]; ok {
			top[k] = v
			delete(fields, k)
		}
	}
	raw, _ := json.Marshal(top)
	if err := decodeStrict(raw, &req); err != nil {
		return nil, nil, nil, err
	}
	if len(req.Listen) == 0 {
		return nil, nil, nil, errors.New(`field "listen": at least one address is required (or "bind": "host:port" for a body in gobetween's form)`)
	}
	if _, ok := fields["name"]; ok {
		return nil, nil, nil, errors.New(`field "name": the handler is named after the server (the URL)`)
	}
	handler := map[string]any{"name": name}
	for k, v := range fields {
		handler[k] = v
	}
	// the handler's own fields are checked strictly here, so that an unknown
	// one is a 400 naming it before any config change
	hraw, _ := json.Marshal(handler)
	var h Handler
	if err := h.UnmarshalJSON(hraw); err != nil {
		return nil, nil, nil, err
	}
	handler["handler"] = "between"
	hraw, _ = json.Marshal(handler)
	handle := []any{}
	switch req.Protocol {
	case "", "tcp", "udp":
		if req.TLS != nil {
			return nil, nil, nil, errors.New(`field "tls": only with protocol "tls"`)
		}
	case "tls":
		if req.TLS == nil || (req.TLS.CertPath == "") == (len(req.TLS.ACMEHosts) == 0) {
			return nil, nil, nil, errors.New(`field "tls": want cert_path and key_path, or acme_hosts`)
		}
		if req.TLS.CertPath != "" && req.TLS.KeyPath == "" {
			return nil, nil, nil, errors.New(`field "tls": key_path is required with cert_path`)
		}
		policy := map[string]any{}
		if req.TLS.CertPath != "" {
			// the files are loaded into the tls app with a tag of this
			// server, and its policy selects only them
			files = map[string]any{"certificate": req.TLS.CertPath, "key": req.TLS.KeyPath, "tags": []any{tagOf(name)}}
			policy["certificate_selection"] = map[string]any{"any_tag": []any{tagOf(name)}}
		} else {
			acme = req.TLS.ACMEHosts
			if err := checkACMEHosts(acme); err != nil {
				return nil, nil, nil, fmt.Errorf(`field "tls": %w`, err)
			}
			// the policy's SNI list records the names this server manages
			policy["match"] = map[string]any{"sni": acme}
		}
		handle = append(handle, map[string]any{"handler": "tls", "connection_policies": []any{policy}})
	default:
		return nil, nil, nil, fmt.Errorf(`field "protocol": %q: want tcp, tls or udp`, req.Protocol)
	}
	listen := req.Listen
	if req.Protocol == "udp" {
		listen = make([]string, len(req.Listen))
	}
	for i, addr := range req.Listen {
		network := ""
		if n, _, ok := strings.Cut(addr, "/"); ok {
			network = strings.TrimSpace(n)
		}
		switch isUDP := isPacketNetwork(network); {
		case req.Protocol == "udp" && network == "":
			listen[i] = "between+udp/" + addr
		case req.Protocol == "udp" && isUDP:
			listen[i] = addr
		case req.Protocol == "udp":
			return nil, nil, nil, fmt.Errorf(`field "listen": %q is not a UDP address (want host:port, between+udp/, udp/, udp4/ or udp6/)`, addr)
		case isUDP:
			return nil, nil, nil, fmt.Errorf(`field "listen": %q is a UDP address: want protocol "udp"`, addr)
		}
	}
	handle = append(handle, json.RawMessage(hraw))
	srv = map[string]any{
		"listen": listen,
		"routes": []any{map[string]any{"handle": handle}},
	}
	return srv, files, acme, nil
}

// buildGobetweenServer converts a body in gobetween's server form (the JSON
// of a [servers.NAME] table: bind, protocol, balance = "leastconn", durations
// as "5s", ...) with the gobetween adapter, so that it means what it means
// in a gobetween config file (without [defaults]: the running config has
// none). What a tls server needs in the tls app is fitted to claimTLS and
// releaseTLS: certificate files are tagged tagOf(name), and ACME names go to
// the between app's acme_hosts with the tls policy matching them by SNI.
// tls.min_version, max_version and ciphers stay in the server's own
// connection policy; tls.session_tickets = false is refused, as it would
// change the tls app for every server and outlive this one.
func buildGobetweenServer(name string, body []byte) (srv map[string]any, files map[string]any, acme []string, err error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var server map[string]any
	if err := dec.Decode(&server); err != nil {
		return nil, nil, nil, fmt.Errorf("body: %w", err)
	}
	converted, parts, warnings, err := gobetween.ConvertServer(name, server, gobetween.ServerOptions{CertTag: tagOf(name)})
	if err != nil {
		return nil, nil, nil, err
	}
	if parts != nil {
		if parts.NoSessionTickets {
			return nil, nil, nil, fmt.Errorf("servers.%s.tls.session_tickets: false would turn session tickets off in Caddy's tls app for every server, beyond this one's life; set apps.tls.session_tickets through /config/ instead", name)
		}
		if len(parts.LoadFiles) > 1 {
			return nil, nil, nil, fmt.Errorf("servers.%s.tls: one certificate per server", name)
		}
		if len(parts.LoadFiles) == 1 {
			files = parts.LoadFiles[0]
		}
		if len(parts.ACMEHosts) > 0 {
			acme = parts.ACMEHosts
			if err := checkACMEHosts(acme); err != nil {
				return nil, nil, nil, fmt.Errorf("servers.%s.tls.acme_hosts: %w", name, err)
			}
			// as for Between's form: the policy's SNI list records the names
			// this server manages, for releaseTLS
			parts.Policy["match"] = map[string]any{"sni": acme}
		}
	}
	// read back as JSON, the form the running config has for releaseTLS
	if err := roundTrip(&converted); err != nil {
		return nil, nil, nil, err
	}
	if files != nil {
		if err := roundTrip(&files); err != nil {
			return nil, nil, nil, err
		}
	}
	// keys without effect in Caddy: said in the log, as caddy adapt would
	for _, w := range warnings {
		caddy.Log().Named("between.admin").Warn("gobetween server body", zap.String("server", name), zap.String("key", w.Directive), zap.String("warning", w.Message))
	}
	return converted, files, acme, nil
}

// roundTrip replaces *m with its JSON decoded again (lists as []any).
func roundTrip(m *map[string]any) error {
	raw, err := json.Marshal(*m)
	if err != nil {
		return err
	}
	*m = nil
	return json.Unmarshal(raw, m)
}

// tagOf is the certificate tag of a server's own certificate files.
func tagOf(name string) string { return "between:" + name }

// holdsHandler reports whether a layer4 server's routes hold a between
// handler of that name (so that the server is this API's to delete).
func holdsHandler(srv any, name string) bool {
	m, _ := srv.(map[string]any)
	routes, _ := m["routes"].([]any)
	for _, r := range routes {
		rm, _ := r.(map[string]any)
		handle, _ := rm["handle"].([]any)
		for _, h := range handle {
			hm, _ := h.(map[string]any)
			if hm["handler"] == "between" && hm["name"] == name {
				return true
			}
		}
	}
	return false
}

// describe renders locations for an error message.
func describe(locs []Location) string {
	if len(locs) == 0 {
		return "another place"
	}
	return locs[0].String()
}

// currentConfig reads the running config through the admin endpoint that
// received r: Caddy exports no other way to read it.
func currentConfig(r *http.Request) (map[string]any, error) {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if local == nil {
		return nil, errors.New("no local address")
	}
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, local.Network(), local.String())
		}},
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://"+r.Host+"/config/", nil)
	if err != nil {
		return nil, err
	}
	req.Host = r.Host
	if o := r.Header.Get("Origin"); o != "" {
		req.Header.Set("Origin", o)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /config/: %s: %s", resp.Status, bytes.TrimSpace(data))
	}
	cfg := map[string]any{}
	if len(bytes.TrimSpace(data)) > 0 && !bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		if err := json.Unmarshal(data, &cfg); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// layer4Servers returns cfg's apps.layer4.servers, creating the path.
func layer4Servers(cfg map[string]any) map[string]any {
	apps := child(cfg, "apps")
	return child(child(apps, "layer4"), "servers")
}

// child returns m[key] as an object, creating it when missing.
func child(m map[string]any, key string) map[string]any {
	c, ok := m[key].(map[string]any)
	if !ok {
		c = map[string]any{}
		m[key] = c
	}
	return c
}

// releaseTLS takes out of the tls and between apps what server name (its
// previous version, srv) put there: its tagged certificate files and the
// ACME names its tls policy matches.
func releaseTLS(cfg map[string]any, name string, srv any) {
	apps := child(cfg, "apps")
	if t, ok := apps["tls"].(map[string]any); ok {
		if certs, ok := t["certificates"].(map[string]any); ok {
			files, _ := certs["load_files"].([]any)
			files = slices.DeleteFunc(files, func(f any) bool {
				fm, _ := f.(map[string]any)
				tags, _ := fm["tags"].([]any)
				return slices.Contains(tags, any(tagOf(name)))
			})
			if len(files) > 0 {
				certs["load_files"] = files
			} else {
				delete(certs, "load_files")
			}
		}
	}
	b, ok := apps["between"].(map[string]any)
	if !ok {
		return
	}
	owned := map[any]bool{}
	// srv is the running config's JSON, or a server built in this request:
	// read both the same way
	var m map[string]any
	if raw, err := json.Marshal(srv); err == nil {
		json.Unmarshal(raw, &m)
	}
	routes, _ := m["routes"].([]any)
	for _, r := range routes {
		rm, _ := r.(map[string]any)
		handle, _ := rm["handle"].([]any)
		for _, h := range handle {
			hm, _ := h.(map[string]any)
			if hm["handler"] != "tls" {
				continue
			}
			policies, _ := hm["connection_policies"].([]any)
			for _, p := range policies {
				pm, _ := p.(map[string]any)
				match, _ := pm["match"].(map[string]any)
				names, _ := match["sni"].([]any)
				for _, n := range names {
					owned[n] = true
				}
			}
		}
	}
	hosts, _ := b["acme_hosts"].([]any)
	hosts = slices.DeleteFunc(hosts, func(h any) bool { return owned[h] })
	if len(hosts) > 0 {
		b["acme_hosts"] = hosts
	} else {
		delete(b, "acme_hosts")
	}
}

// claimTLS adds a server's certificate files to the tls app and its ACME
// names to the between app.
func claimTLS(cfg map[string]any, files map[string]any, acme []string) {
	apps := child(cfg, "apps")
	if files != nil {
		certs := child(child(apps, "tls"), "certificates")
		list, _ := certs["load_files"].([]any)
		certs["load_files"] = append(list, files)
	}
	if len(acme) > 0 {
		b := child(apps, "between")
		hosts, _ := b["acme_hosts"].([]any)
		for _, h := range acme {
			if !slices.Contains(hosts, any(h)) {
				hosts = append(hosts, h)
			}
		}
		b["acme_hosts"] = hosts
	}
}
