package lbcmd

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// compact normalises a JSON text for comparison.
func compact(t *testing.T, s string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("bad JSON %s: %v", s, err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const noAccessLog = `"logging":{"logs":{"default":{"exclude":["layer4.handlers.between.access"]}}}`

func TestBuildConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{
			name: "defaults, bare listen address",
			opts: Options{Listen: ":3000", To: []string{"127.0.0.1:8001", "127.0.0.1:8002"}},
			want: `{"admin":{"config":{"persist":false}},` + noAccessLog + `,"apps":{"layer4":{"servers":{"lb":{
				"listen":["between+tcp/:3000"],
				"routes":[{"handle":[{"handler":"between","name":"lb","balance":{"policy":"roundrobin"},
					"discovery":{"kind":"static","static_list":["127.0.0.1:8001","127.0.0.1:8002"]}}]}]}}}}}`,
		},
		{
			name: "every flag",
			opts: Options{Listen: "tcp/127.0.0.1:6380", To: []string{"10.0.0.1:6379 weight=2 sni=a.example", "10.0.0.2:6379"},
				Balance: "leastconn", Protocol: "tcp", Healthcheck: "ping", SNI: true, AccessLog: true, Admin: "127.0.0.1:2999"},
			want: `{"admin":{"listen":"127.0.0.1:2999","config":{"persist":false}},"apps":{"layer4":{"servers":{"lb":{
				"listen":["tcp/127.0.0.1:6380"],
				"routes":[{"handle":[{"handler":"between","name":"lb","balance":{"policy":"leastconn"},
					"discovery":{"kind":"static","static_list":["10.0.0.1:6379 weight=2 sni=a.example","10.0.0.2:6379"]},
					"healthcheck":{"kind":"ping","interval":"2s"},"sni":{}}]}]}}}}}`,
		},
		{
			name: "admin off, explicit between+tcp, first policy",
			opts: Options{Listen: "between+tcp/[::1]:3000", To: []string{"[::1]:8001"}, Balance: "first", Admin: "off"},
			want: `{"admin":{"disabled":true,"config":{"persist":false}},` + noAccessLog + `,"apps":{"layer4":{"servers":{"lb":{
				"listen":["between+tcp/[::1]:3000"],
				"routes":[{"handle":[{"handler":"between","name":"lb","balance":{"policy":"first"},
					"discovery":{"kind":"static","static_list":["[::1]:8001"]}}]}]}}}}}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := BuildConfig(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.Marshal(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := compact(t, string(got)), compact(t, tc.want); g != w {
				t.Errorf("config:\n got %s\nwant %s", g, w)
			}
		})
	}
}

func TestBuildConfigEveryPolicy(t *testing.T) {
	for _, p := range Policies {
		cfg, err := BuildConfig(Options{Listen: ":3000", To: []string{"127.0.0.1:1"}, Balance: p})
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if want := `"balance":{"policy":"` + p + `"}`; !bytes.Contains(cfg.AppsRaw["layer4"], []byte(want)) {
			t.Errorf("%s: config %s lacks %s", p, cfg.AppsRaw["layer4"], want)
		}
	}
}

func TestBuildConfigErrors(t *testing.T) {
	ok := Options{Listen: ":3000", To: []string{"127.0.0.1:8001"}}
	for _, tc := range []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"no backends", func(o *Options) { o.To = nil }, "no backends: give at least one --to"},
		{"backend without port", func(o *Options) { o.To = []string{"127.0.0.1"} }, `--to "127.0.0.1"`},
		{"backend bad attribute", func(o *Options) { o.To = []string{"127.0.0.1:1 colour=red"} }, `unknown attribute "colour"`},
		{"empty backend", func(o *Options) { o.To = []string{"  "} }, "empty backend line"},
		{"unknown policy", func(o *Options) { o.Balance = "random" }, `--balance "random": unknown policy (want one of weight, roundrobin, iphash, iphash1, leastconn, leastbandwidth, first)`},
		{"udp protocol", func(o *Options) { o.Protocol = "udp" }, "udp is not supported yet"},
		{"udp listen", func(o *Options) { o.Listen = "udp/:53" }, "udp is not supported yet"},
		{"bad protocol", func(o *Options) { o.Protocol = "sctp" }, `--protocol "sctp": want tcp or udp`},
		{"listen without port", func(o *Options) { o.Listen = "localhost" }, `--listen "localhost": want host:port`},
		{"listen bad port", func(o *Options) { o.Listen = ":99999" }, `--listen ":99999"`},
		{"empty listen", func(o *Options) { o.Listen = "" }, "--listen: empty address"},
		{"other healthcheck", func(o *Options) { o.Healthcheck = "probe" }, `--healthcheck "probe": only ping`},
		{"negative interval", func(o *Options) { o.Healthcheck = "ping"; o.HealthcheckInterval = -time.Second }, "--healthcheck-interval -1s: must be positive"},
		{"bad admin", func(o *Options) { o.Admin = "localhost:abc" }, `--admin "localhost:abc"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := ok
			tc.change(&o)
			_, err := BuildConfig(o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
