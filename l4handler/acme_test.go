package l4handler

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func TestCheckACMEHosts(t *testing.T) {
	for _, tc := range []struct {
		names []string
		err   string // substring of the error; "" = valid
	}{
		{[]string{"l4.test"}, ""},
		{[]string{"db.example.com", "a-b.c1.example.org", "x.example.com."}, ""},
		{[]string{"l4.test", "L4.test"}, `acme_hosts[1] "L4.test": duplicate of acme_hosts[0]`},
		{[]string{""}, "acme_hosts[0]"},
		{[]string{"ok.test", "*.example.com"}, `acme_hosts[1] "*.example.com": wildcard names need the DNS challenge`},
		{[]string{"192.0.2.1"}, "IP addresses are not accepted"},
		{[]string{"2001:db8::1"}, "IP addresses are not accepted"},
		{[]string{"[2001:db8::1]"}, "IP addresses are not accepted"},
		{[]string{"l4.test:443"}, "without scheme, port or path"},
		{[]string{"https://l4.test"}, "without scheme, port or path"},
		{[]string{"a..test"}, `label ""`},
		{[]string{"-a.test"}, "hyphen"},
		{[]string{"a_b.test"}, `character '_'`},
		{[]string{strings.Repeat("a", 64) + ".test"}, "1 to 63 characters"},
		{[]string{strings.Repeat("abcdefghi.", 26) + "test"}, "253"},
	} {
		err := checkACMEHosts(tc.names)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: unexpected error %v", tc.names, err)
		case tc.err != "" && err == nil:
			t.Errorf("%q: accepted, want an error with %q", tc.names, tc.err)
		case tc.err != "" && !strings.Contains(err.Error(), tc.err):
			t.Errorf("%q: error %q, want it to contain %q", tc.names, err, tc.err)
		}
	}
}

func TestGlobalOption(t *testing.T) {
	for _, tc := range []struct {
		name      string
		caddyfile string
		want      []string // apps.between.acme_hosts
		err       string
	}{
		{"one line", "{\n\tbetween {\n\t\tacme_hosts l4.test db.test\n\t}\n}\n", []string{"l4.test", "db.test"}, ""},
		{"repeated", "{\n\tbetween {\n\t\tacme_hosts l4.test\n\t\tacme_hosts db.test\n\t}\n}\n", []string{"l4.test", "db.test"}, ""},
		{"two blocks", "{\n\tbetween {\n\t\tacme_hosts l4.test\n\t}\n\tbetween {\n\t\tacme_hosts db.test\n\t}\n}\n", []string{"l4.test", "db.test"}, ""},
		{"no names", "{\n\tbetween {\n\t\tacme_hosts\n\t}\n}\n", nil, "acme_hosts: at least one name is required"},
		{"unknown", "{\n\tbetween {\n\t\tacme_host l4.test\n\t}\n}\n", nil, `unknown subdirective "acme_host"`},
		{"argument", "{\n\tbetween l4.test\n}\n", nil, "wrong argument count"},
		{"duplicate", "{\n\tbetween {\n\t\tacme_hosts l4.test l4.test\n\t}\n}\n", nil, "duplicate"},
		{"wildcard", "{\n\tbetween {\n\t\tacme_hosts *.l4.test\n\t}\n}\n", nil, "wildcard"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(tc.caddyfile), nil)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var cfg struct {
				Apps struct {
					Between struct {
						ACMEHosts []string `json:"acme_hosts"`
					} `json:"between"`
				} `json:"apps"`
			}
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatal(err)
			}
			if strings.Join(cfg.Apps.Between.ACMEHosts, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("apps.between.acme_hosts = %q, want %q (config %s)", cfg.Apps.Between.ACMEHosts, tc.want, out)
			}
		})
	}
}
