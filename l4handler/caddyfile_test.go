package l4handler

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func TestParseUDP(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want UDPConfig
		err  string
	}{
		{in: "udp {\n max_requests 2\n max_responses 1\n transparent\n max_sessions 500\n}",
			want: UDPConfig{MaxRequests: 2, MaxResponses: 1, Transparent: true, MaxSessions: 500}},
		{in: "udp {\n max_responses 1\n}", want: UDPConfig{MaxResponses: 1}},
		{in: "udp {\n transparent true\n}", want: UDPConfig{Transparent: true}},
		{in: "udp {\n transparent false\n}", want: UDPConfig{}},
		{in: "udp", want: UDPConfig{}},
		{in: "udp {\n transparent yes\n}", err: `transparent "yes": want no argument, true or false`},
		{in: "udp {\n transparent true false\n}", err: "transparent: at most one argument"},
		{in: "udp {\n max_requests\n}", err: "max_requests: one argument required"},
		{in: "udp {\n max_requests 1 2\n}", err: "max_requests: exactly one argument expected"},
		{in: "udp {\n max_responses one\n}", err: `max_responses "one": want an integer`},
		{in: "udp {\n max_replies 1\n}", err: `udp: unknown subdirective "max_replies"`},
		{in: "udp 1", err: `udp: takes no argument, got "1"`},
	} {
		d := caddyfile.NewTestDispenser(tc.in)
		d.Next()
		got, err := parseUDP(d)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || *got != tc.want {
			t.Errorf("%q: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// udpCaddyfile is DESIGN §4's UDP example with every udp subdirective, as
// `caddy fmt` writes it.
const udpCaddyfile = `{
	layer4 {
		between+udp/:53 {
			route {
				between dns {
					discovery static 10.0.0.53:53 10.0.1.53:53
					client_idle_timeout 30s
					udp {
						max_requests 4
						max_responses 1
						transparent
						max_sessions 5000
					}
				}
			}
		}
	}
}
`

// TestUDPCaddyfileAdapt: the udp block goes through the whole Caddyfile
// adapter (what `caddy adapt` runs) into the handler's JSON, which the
// handler decodes back strictly to the same values; `caddy fmt` keeps the
// example as it is.
func TestUDPCaddyfileAdapt(t *testing.T) {
	if got := caddyfile.Format([]byte(udpCaddyfile)); !bytes.Equal(got, []byte(udpCaddyfile)) {
		t.Errorf("caddy fmt changes the example:\n%s", got)
	}
	out, warnings, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(udpCaddyfile), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	var cfg struct {
		Apps struct {
			Layer4 struct {
				Servers map[string]struct {
					Listen []string `json:"listen"`
					Routes []struct {
						Handle []json.RawMessage `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"layer4"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	var srv *struct {
		Listen []string `json:"listen"`
		Routes []struct {
			Handle []json.RawMessage `json:"handle"`
		} `json:"routes"`
	}
	for _, s := range cfg.Apps.Layer4.Servers {
		srv = &s
	}
	if srv == nil || len(srv.Listen) != 1 || srv.Listen[0] != "between+udp/:53" || len(srv.Routes) != 1 || len(srv.Routes[0].Handle) != 1 {
		t.Fatalf("adapted config: %s", out)
	}
	raw := srv.Routes[0].Handle[0]
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	if got, want := string(fields["udp"]), `{"max_requests":4,"max_responses":1,"max_sessions":5000,"transparent":true}`; got != want {
		t.Errorf("handler JSON %s: udp %s, want %s", raw, got, want)
	}
	delete(fields, "handler")
	stripped, _ := json.Marshal(fields)
	var h Handler
	if err := h.UnmarshalJSON(stripped); err != nil {
		t.Fatalf("the handler does not read its adapted JSON %s back: %v", stripped, err)
	}
	want := UDPConfig{MaxRequests: 4, MaxResponses: 1, Transparent: true, MaxSessions: 5000}
	if h.Name != "dns" || h.UDP == nil || *h.UDP != want {
		t.Errorf("round trip: name %q, udp %+v; want dns, %+v", h.Name, h.UDP, want)
	}
}

// TestUDPCaddyfileErrors: a wrong udp block fails the whole adapter with a
// message naming the subdirective.
func TestUDPCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct{ block, err string }{
		{"udp {\n\tmax_replies 1\n}", `unknown subdirective "max_replies"`},
		{"udp {\n\ttransparent maybe\n}", `transparent "maybe"`},
		{"udp on", `udp: takes no argument, got "on"`},
		{"udb {\n\tmax_responses 1\n}", `between: unknown subdirective "udb"`},
	} {
		in := "{\n\tlayer4 {\n\t\tbetween+udp/:53 {\n\t\t\troute {\n\t\t\t\tbetween dns {\n\t\t\t\t\tdiscovery static 127.0.0.1:53\n" +
			tc.block + "\n\t\t\t\t}\n\t\t\t}\n\t\t}\n\t}\n}\n"
		_, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(in), nil)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: error %v, want one containing %q", tc.block, err, tc.err)
		}
	}
}

// FuzzUnmarshalCaddyfile checks that no between block makes the parser
// panic.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"between dns {\n\tdiscovery static 127.0.0.1:53\n\tudp {\n\t\tmax_requests 1\n\t\ttransparent true\n\t}\n}",
		"between {\n\tudp\n\tmax_connections 3\n\tsni {\n\t\tread_timeout 1s\n\t}\n}",
		"between x {\n\tudp {\n\t\ttransparent\n\t\tmax_sessions 9\n\t\tmax_responses 2\n\t}\n}",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var h Handler
		h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
	})
}
