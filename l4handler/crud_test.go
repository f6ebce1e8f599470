package l4handler

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestBuildServer: the body of POST/PUT becomes a layer4 server with one
// route; bad bodies are errors naming the field.
func TestBuildServer(t *testing.T) {
	const disc = `"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}`
	for _, tc := range []struct {
		name, body string
		want       []string // parts of the server's JSON
		files      bool
		acme       []string
		err        string
	}{
		{"tcp", `{"listen":["between+tcp/:1"],"retries":1,` + disc + `}`, []string{`"handler":"between"`, `"name":"web"`, `"retries":1`}, false, nil, ""},
		{"tls files", `{"listen":[":1"],"protocol":"tls","tls":{"cert_path":"c","key_path":"k"},` + disc + `}`, []string{`"handler":"tls"`, `"any_tag":["between:web"]`}, true, nil, ""},
		{"tls acme", `{"listen":[":1"],"protocol":"tls","tls":{"acme_hosts":["db.example.com"]},` + disc + `}`, []string{`"sni":["db.example.com"]`}, false, []string{"db.example.com"}, ""},
		{"no listen", `{` + disc + `}`, nil, false, nil, "listen"},
		{"name in body", `{"listen":[":1"],"name":"x",` + disc + `}`, nil, false, nil, "name"},
		{"unknown handler field", `{"listen":[":1"],"retires":1,` + disc + `}`, nil, false, nil, "retires"},
		{"unknown tls field", `{"listen":[":1"],"protocol":"tls","tls":{"cert":"c"},` + disc + `}`, nil, false, nil, "cert"},
		{"tls without certificate", `{"listen":[":1"],"protocol":"tls",` + disc + `}`, nil, false, nil, "tls"},
		{"tls with both", `{"listen":[":1"],"protocol":"tls","tls":{"cert_path":"c","key_path":"k","acme_hosts":["a.test"]},` + disc + `}`, nil, false, nil, "tls"},
		{"tls block on tcp", `{"listen":[":1"],"tls":{"cert_path":"c","key_path":"k"},` + disc + `}`, nil, false, nil, "tls"},
		{"bad acme name", `{"listen":[":1"],"protocol":"tls","tls":{"acme_hosts":["1.2.3.4"]},` + disc + `}`, nil, false, nil, "acme_hosts"},
		{"udp bare address", `{"listen":["127.0.0.1:53","[::1]:53"],"protocol":"udp","udp":{"max_responses":1},` + disc + `}`,
			[]string{`"listen":["between+udp/127.0.0.1:53","between+udp/[::1]:53"]`, `"udp":{"max_responses":1}`, `"handler":"between"`}, false, nil, ""},
		{"udp networks kept", `{"listen":["udp/:53","UDP4/:54","between+udp/:55"],"protocol":"udp","client_idle_timeout":"30s",` + disc + `}`,
			[]string{`"listen":["udp/:53","UDP4/:54","between+udp/:55"]`, `"client_idle_timeout":"30s"`}, false, nil, ""},
		{"udp every field", `{"listen":[":53"],"protocol":"udp","udp":{"max_requests":2,"max_responses":1,"transparent":true,"max_sessions":10},` + disc + `}`,
			[]string{`"udp":{"max_requests":2,"max_responses":1,"transparent":true,"max_sessions":10}`}, false, nil, ""},
		{"udp with tls", `{"listen":[":53"],"protocol":"udp","tls":{"cert_path":"c","key_path":"k"},` + disc + `}`, nil, false, nil, `field "tls"`},
		{"udp on a tcp address", `{"listen":["tcp/:53"],"protocol":"udp",` + disc + `}`, nil, false, nil, `field "listen": "tcp/:53" is not a UDP address`},
		{"udp on a between+tcp address", `{"listen":[":52","between+tcp/:53"],"protocol":"udp",` + disc + `}`, nil, false, nil, `"between+tcp/:53" is not a UDP address`},
		{"tcp on a udp address", `{"listen":["between+udp/:53"],` + disc + `}`, nil, false, nil, `field "listen": "between+udp/:53" is a UDP address: want protocol "udp"`},
		{"unknown udp field", `{"listen":[":53"],"protocol":"udp","udp":{"max_replies":1},` + disc + `}`, nil, false, nil, "max_replies"},
		{"unknown protocol", `{"listen":["udp/:1"],"protocol":"sctp",` + disc + `}`, nil, false, nil, `field "protocol": "sctp": want tcp, tls or udp`},
		{"not JSON", `{`, nil, false, nil, "body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, files, acme, ok := checkBuildServer(t, tc.body, tc.err, tc.want)
			if !ok {
				return
			}
			if (files != nil) != tc.files || strings.Join(acme, ",") != strings.Join(tc.acme, ",") {
				t.Errorf("files %v, acme %v; want files %v, acme %v", files, acme, tc.files, tc.acme)
			}
		})
	}
}

// checkBuildServer runs buildServer for the handler "web" on body. When
// wantErr is set it checks that the error names it and reports false;
// otherwise it fails on an error, checks that the server's JSON holds every
// part of want, and returns that JSON with the TLS files and ACME hosts.
func checkBuildServer(t *testing.T, body, wantErr string, want []string) (js string, files map[string]any, acme []string, ok bool) {
	t.Helper()
	srv, files, acme, err := buildServer("web", []byte(body))
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want one naming %q", err, wantErr)
		}
		return "", nil, nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(srv)
	for _, w := range want {
		if !strings.Contains(string(b), w) {
			t.Errorf("server %s lacks %s", b, w)
		}
	}
	return string(b), files, acme, true
}

// putServer does to cfg what a POST or PUT of body for the server name
// does: build it, take out what its previous version put in the tls and
// between apps, and put the new one in.
func putServer(t *testing.T, cfg map[string]any, name, body string) {
	t.Helper()
	srv, files, acme, err := buildServer(name, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	servers := layer4Servers(cfg)
	releaseTLS(cfg, name, servers[name])
	servers[name] = srv
	claimTLS(cfg, files, acme)
}

// TestClaimReleaseTLS: what a server puts in the tls and between apps is
// taken out again when it is replaced or deleted, and nothing else is.
func TestClaimReleaseTLS(t *testing.T) {
	cfg := map[string]any{}
	if err := json.Unmarshal([]byte(`{"apps":{"between":{"acme_hosts":["keep.test"]},
		"tls":{"certificates":{"load_files":[{"certificate":"other","key":"other"}]}}}}`), &cfg); err != nil {
		t.Fatal(err)
	}
	const disc = `"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}`
	add := func(name, body string) { putServer(t, cfg, name, body) }
	add("a", `{"listen":[":1"],"protocol":"tls","tls":{"acme_hosts":["a.test"]},`+disc+`}`)
	add("b", `{"listen":[":2"],"protocol":"tls","tls":{"cert_path":"c","key_path":"k"},`+disc+`}`)
	js := func() string { b, _ := json.Marshal(cfg["apps"]); return string(b) }
	for _, w := range []string{`"acme_hosts":["keep.test","a.test"]`, `"between:b"`, `"certificate":"other"`} {
		if !strings.Contains(js(), w) {
			t.Fatalf("apps %s lack %s", js(), w)
		}
	}
	// replacing a with a plain server takes its ACME name out
	add("a", `{"listen":[":1"],`+disc+`}`)
	servers := layer4Servers(cfg)
	releaseTLS(cfg, "b", servers["b"])
	delete(servers, "b")
	got := js()
	if strings.Contains(got, "a.test") || strings.Contains(got, "between:b") {
		t.Fatalf("apps %s still hold what a and b put there", got)
	}
	if !strings.Contains(got, "keep.test") || !strings.Contains(got, `"certificate":"other"`) {
		t.Fatalf("apps %s lost what the operator configured", got)
	}
}

// TestBuildGobetweenServer: a body with "bind" (and no "listen") is in
// gobetween's server form and is converted by the gobetween adapter; its TLS
// parts are fitted to claimTLS/releaseTLS; errors name the gobetween key.
func TestBuildGobetweenServer(t *testing.T) {
	const disc = `"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}`
	for _, tc := range []struct {
		name, body string
		want       []string // parts of the server's JSON
		not        []string // what it must not hold
		files      []string // parts of the load_files entry's JSON; none when nil
		acme       []string
		err        string
	}{
		{"tcp", `{"bind":"127.0.0.1:3000","protocol":"tcp","balance":"leastconn","max_connections":10,"client_idle_timeout":"5s","backend_connection_timeout":"0",` +
			`"healthcheck":{"kind":"none","interval":"2s"},` + disc + `}`,
			[]string{`"listen":["between+tcp/127.0.0.1:3000"]`, `"handler":"between"`, `"name":"web"`, `"balance":{"policy":"leastconn"}`, `"max_connections":10`, `"client_idle_timeout":"5s"`},
			[]string{`healthcheck`, `backend_connection_timeout`, `"handler":"tls"`}, nil, nil, ""},
		{"exec health check as a string", `{"bind":":1","healthcheck":{"kind":"exec","interval":"1s","exec_command":"/bin/check","exec_expected_positive_output":"1"},` + disc + `}`,
			[]string{`"exec_command":["/bin/check"]`, `"kind":"exec"`, `"interval":"1s"`}, nil, nil, nil, ""},
		{"balance as a table", `{"bind":":1","balance":{"kind":"iphash"},` + disc + `}`, []string{`"balance":{"policy":"iphash"}`}, nil, nil, nil, ""},
		{"access, sni, backends_tls", `{"bind":":1","access":{"default":"deny","rules":["allow 127.0.0.1/32"]},"sni":{"read_timeout":"2s","hostname_matching_strategy":"regexp"},"backends_tls":{"min_version":"tls1.2","ignore_verify":true},` + disc + `}`,
			[]string{`"access":{"default":"deny","rules":["allow 127.0.0.1/32"]}`, `"read_timeout":"2s"`, `"backends_tls":{"ignore_verify":true,"min_version":"1.2"}`}, nil, nil, nil, ""},
		{"tls files with options", `{"bind":":1","protocol":"tls","tls":{"cert_path":"c","key_path":"k","min_version":"tls1.2","max_version":"tls1.3","ciphers":["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],"prefer_server_ciphers":true,"session_tickets":true},` + disc + `}`,
			[]string{`"handler":"tls"`, `"any_tag":["between:web"]`, `"protocol_min":"tls1.2"`, `"protocol_max":"tls1.3"`, `"cipher_suites":["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]`},
			[]string{`gobetween-web`}, []string{`"certificate":"c"`, `"key":"k"`, `"tags":["between:web"]`}, nil, ""},
		{"tls acme", `{"bind":":1","protocol":"tls","tls":{"acme_hosts":["db.example.com"]},` + disc + `}`,
			[]string{`"match":{"sni":["db.example.com"]}`}, nil, nil, []string{"db.example.com"}, ""},
		{"udp", `{"bind":"127.0.0.1:53","protocol":"udp","udp":{"max_responses":1},` + disc + `}`,
			[]string{`"listen":["between+udp/127.0.0.1:53"]`, `"udp":{"max_responses":1}`}, nil, nil, nil, ""},
		{"bind and listen", `{"bind":":1","listen":[":1"],` + disc + `}`, nil, nil, nil, nil, `fields "bind" (gobetween's server form) and "listen"`},
		{"unknown key", `{"bind":":1","bogus":1,` + disc + `}`, nil, nil, nil, nil, "servers.web.bogus: not a server key"},
		{"name in body", `{"bind":":1","name":"x",` + disc + `}`, nil, nil, nil, nil, "servers.web.name"},
		{"bad balance", `{"bind":":1","balance":"random",` + disc + `}`, nil, nil, nil, nil, `servers.web.balance: "random"`},
		{"bad bind", `{"bind":"nowhere",` + disc + `}`, nil, nil, nil, nil, `servers.web.bind: "nowhere" is not host:port`},
		{"bad duration", `{"bind":":1","client_idle_timeout":"soon",` + disc + `}`, nil, nil, nil, nil, "servers.web.client_idle_timeout"},
		{"no discovery", `{"bind":":1"}`, nil, nil, nil, nil, "servers.web.discovery: required"},
		{"udp without limits", `{"bind":":53","protocol":"udp",` + disc + `}`, nil, nil, nil, nil, "servers.web.udp: protocol = \"udp\" needs"},
		{"tls without section", `{"bind":":1","protocol":"tls",` + disc + `}`, nil, nil, nil, nil, "servers.web.tls: required"},
		{"ssl3", `{"bind":":1","protocol":"tls","tls":{"cert_path":"c","key_path":"k","min_version":"ssl3"},` + disc + `}`, nil, nil, nil, nil, "servers.web.tls.min_version"},
		{"session tickets off", `{"bind":":1","protocol":"tls","tls":{"cert_path":"c","key_path":"k","session_tickets":false},` + disc + `}`, nil, nil, nil, nil, "servers.web.tls.session_tickets"},
		{"bad acme name", `{"bind":":1","protocol":"tls","tls":{"acme_hosts":["1.2.3.4"]},` + disc + `}`, nil, nil, nil, nil, "servers.web.tls.acme_hosts"},
		{"not JSON", `{"bind":`, nil, nil, nil, nil, "body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, files, acme, ok := checkBuildServer(t, tc.body, tc.err, tc.want)
			if !ok {
				return
			}
			for _, w := range tc.not {
				if strings.Contains(js, w) {
					t.Errorf("server %s holds %s", js, w)
				}
			}
			if (files != nil) != (tc.files != nil) {
				t.Fatalf("files %v, want %v", files, tc.files)
			}
			fjs, _ := json.Marshal(files)
			for _, w := range tc.files {
				if !strings.Contains(string(fjs), w) {
					t.Errorf("load_files entry %s lacks %s", fjs, w)
				}
			}
			if strings.Join(acme, ",") != strings.Join(tc.acme, ",") {
				t.Errorf("acme %v, want %v", acme, tc.acme)
			}
		})
	}
}

// TestClaimReleaseGobetweenTLS: what a server in gobetween's form puts in
// the tls and between apps is taken out again exactly as for Between's form.
func TestClaimReleaseGobetweenTLS(t *testing.T) {
	cfg := map[string]any{}
	if err := json.Unmarshal([]byte(`{"apps":{"between":{"acme_hosts":["keep.test"]},
		"tls":{"certificates":{"load_files":[{"certificate":"other","key":"other","tags":["gobetween-b"]}]}}}}`), &cfg); err != nil {
		t.Fatal(err)
	}
	const disc = `"discovery":{"kind":"static","static_list":["127.0.0.1:1"]}`
	add := func(name, body string) { putServer(t, cfg, name, body) }
	js := func() string { b, _ := json.Marshal(cfg["apps"]); return string(b) }
	add("a", `{"bind":":1","protocol":"tls","tls":{"acme_hosts":["a.test"],"min_version":"tls1.2"},`+disc+`}`)
	add("b", `{"bind":":2","protocol":"tls","tls":{"cert_path":"c","key_path":"k","min_version":"tls1.2"},`+disc+`}`)
	for _, w := range []string{`"acme_hosts":["keep.test","a.test"]`, `"tags":["between:b"]`, `"certificate":"other"`} {
		if !strings.Contains(js(), w) {
			t.Fatalf("apps %s lack %s", js(), w)
		}
	}
	// replacing b in gobetween's form again keeps one entry of its files
	add("b", `{"bind":":2","protocol":"tls","tls":{"cert_path":"c2","key_path":"k2"},`+disc+`}`)
	if got := js(); strings.Count(got, `"tags":["between:b"]`) != 1 || !strings.Contains(got, `"certificate":"c2"`) || strings.Contains(got, `"certificate":"c"`) {
		t.Fatalf("apps %s: want only b's new files", got)
	}
	// replacing a with Between's form, deleting b
	add("a", `{"listen":[":1"],`+disc+`}`)
	servers := layer4Servers(cfg)
	releaseTLS(cfg, "b", servers["b"])
	delete(servers, "b")
	got := js()
	if strings.Contains(got, "a.test") || strings.Contains(got, "between:b") {
		t.Fatalf("apps %s still hold what a and b put there", got)
	}
	if !strings.Contains(got, "keep.test") || !strings.Contains(got, `"certificate":"other"`) {
		t.Fatalf("apps %s lost what the operator configured", got)
	}
}
