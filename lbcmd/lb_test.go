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
		{
			name: "udp, bare listen address: between+udp and a 30s idle end",
			opts: Options{Listen: "127.0.0.1:5353", To: []string{"127.0.0.1:53", "127.0.0.2:53"}, Protocol: "udp"},
			want: `{"admin":{"config":{"persist":false}},` + noAccessLog + `,"apps":{"layer4":{"servers":{"lb":{
				"listen":["between+udp/127.0.0.1:5353"],
				"routes":[{"handle":[{"handler":"between","name":"lb","balance":{"policy":"roundrobin"},
					"discovery":{"kind":"static","static_list":["127.0.0.1:53","127.0.0.2:53"]},
					"client_idle_timeout":"30s"}]}]}}}}}`,
		},
		{
			name: "udp limits, explicit udp/ network, healthcheck none",
			opts: Options{Listen: "udp/[::1]:5353", To: []string{"[::1]:53"}, Protocol: "UDP", UDPMaxRequests: 3, UDPMaxResponses: 1,
				Healthcheck: "none", Balance: "iphash"},
			want: `{"admin":{"config":{"persist":false}},` + noAccessLog + `,"apps":{"layer4":{"servers":{"lb":{
				"listen":["udp/[::1]:5353"],
				"routes":[{"handle":[{"handler":"between","name":"lb","balance":{"policy":"iphash"},
					"discovery":{"kind":"static","static_list":["[::1]:53"]},
					"client_idle_timeout":"30s","udp":{"max_requests":3,"max_responses":1}}]}]}}}}}`,
		},
		{
			name: "udp fire-and-forget on between+udp",
			opts: Options{Listen: "between+udp/:514", To: []string{"10.0.0.1:514"}, Protocol: "udp", UDPMaxRequests: 1},
			want: `{"admin":{"config":{"persist":false}},` + noAccessLog + `,"apps":{"layer4":{"servers":{"lb":{
				"listen":["between+udp/:514"],
				"routes":[{"handle":[{"handler":"between","name":"lb","balance":{"policy":"roundrobin"},
					"discovery":{"kind":"static","static_list":["10.0.0.1:514"]},
					"client_idle_timeout":"30s","udp":{"max_requests":1}}]}]}}}}}`,
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
		{"udp listen with tcp", func(o *Options) { o.Listen = "udp/:53" }, `--listen "udp/:53": a UDP address needs --protocol udp`},
		{"between+udp listen with tcp", func(o *Options) { o.Listen = "between+udp/:53" }, "a UDP address needs --protocol udp"},
		{"tcp listen with udp", func(o *Options) { o.Protocol = "udp"; o.Listen = "tcp/:53" }, `--listen "tcp/:53": --protocol udp needs a UDP address`},
		{"unix listen with udp", func(o *Options) { o.Protocol = "udp"; o.Listen = "unix//tmp/x.sock" }, "--protocol udp needs a UDP address"},
		{"udp ping", func(o *Options) { o.Protocol = "udp"; o.Healthcheck = "ping" }, "--healthcheck ping: a TCP connect says nothing about a UDP backend"},
		{"udp sni", func(o *Options) { o.Protocol = "udp"; o.SNI = true }, "--sni: SNI is read from a TLS ClientHello over TCP"},
		{"udp max requests on tcp", func(o *Options) { o.UDPMaxRequests = 1 }, "--udp-max-requests: only with --protocol udp"},
		{"udp max responses on tcp", func(o *Options) { o.UDPMaxResponses = 1 }, "--udp-max-responses: only with --protocol udp"},
		{"udp negative requests", func(o *Options) { o.Protocol = "udp"; o.UDPMaxRequests = -1 }, "--udp-max-requests -1: must not be negative"},
		{"udp negative responses", func(o *Options) { o.Protocol = "udp"; o.UDPMaxResponses = -2 }, "--udp-max-responses -2: must not be negative"},
		{"bad protocol", func(o *Options) { o.Protocol = "sctp" }, `--protocol "sctp": want tcp or udp`},
		{"listen without port", func(o *Options) { o.Listen = "localhost" }, `--listen "localhost": want host:port`},
		{"listen bad port", func(o *Options) { o.Listen = ":99999" }, `--listen ":99999"`},
		{"empty listen", func(o *Options) { o.Listen = "" }, "--listen: empty address"},
		{"other healthcheck", func(o *Options) { o.Healthcheck = "probe" }, `--healthcheck "probe": only none and ping`},
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
