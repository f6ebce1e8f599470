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
			srv, files, acme, err := buildServer("web", []byte(tc.body))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one naming %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			js, _ := json.Marshal(srv)
			for _, w := range tc.want {
				if !strings.Contains(string(js), w) {
					t.Errorf("server %s lacks %s", js, w)
				}
			}
			if (files != nil) != tc.files || strings.Join(acme, ",") != strings.Join(tc.acme, ",") {
				t.Errorf("files %v, acme %v; want files %v, acme %v", files, acme, tc.files, tc.acme)
			}
		})
	}
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
	add := func(name, body string) {
		srv, files, acme, err := buildServer(name, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		servers := layer4Servers(cfg)
		releaseTLS(cfg, name, servers[name])
		servers[name] = srv
		claimTLS(cfg, files, acme)
	}
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
