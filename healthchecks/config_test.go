package healthchecks

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestModulesRegistered(t *testing.T) {
	for _, kind := range []string{"ping", "probe", "exec", "http"} {
		info, err := caddy.GetModule("between.healthchecks." + kind)
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		if _, ok := info.New().(Configured); !ok {
			t.Fatalf("%s does not implement Configured", kind)
		}
	}
}

func TestValidateNamesTheField(t *testing.T) {
	tests := []struct {
		kind, json string
		wantErr    string // substring; "" = valid
	}{
		{"ping", `{"interval":"2s"}`, ""},
		{"ping", `{"interval":"2s","timeout":"1s","fails":3,"passes":2,"initial_status":"unhealthy","port":8080}`, ""},
		{"ping", `{}`, "interval"},
		{"ping", `{"interval":"-1s"}`, "interval"},
		{"ping", `{"interval":"2s","timeout":"-1s"}`, "timeout"},
		{"ping", `{"interval":"2s","fails":-1}`, "fails"},
		{"ping", `{"interval":"2s","passes":-2}`, "passes"},
		{"ping", `{"interval":"2s","initial_status":"sick"}`, "initial_status"},
		{"ping", `{"interval":"2s","port":70000}`, "port"},
		{"ping", `{"interval":"2s","probe_send":"x"}`, "probe_send"}, // unknown field

		{"probe", `{"interval":"2s","probe_send":"PING\\r\\n","probe_recv":"+PONG"}`, ""},
		{"probe", `{"interval":"2s","probe_protocol":"sctp"}`, "probe_protocol"},
		{"probe", `{"interval":"2s","probe_strategy":"contains"}`, "probe_strategy"},
		{"probe", `{"interval":"2s","probe_send":"\\q"}`, "probe_send"},
		{"probe", `{"interval":"2s","probe_send":"\\x4"}`, "probe_send"},
		{"probe", `{"interval":"2s","probe_recv":"\\u12"}`, "probe_recv"},
		{"probe", `{"interval":"2s","probe_strategy":"regexp","probe_recv":"(("}`, "probe_recv"},
		{"probe", `{"interval":"2s","probe_strategy":"regexp"}`, "probe_recv"},
		{"probe", `{"interval":"2s","probe_recv_len":-1}`, "probe_recv_len"},
		{"probe", `{"interval":"2s","probe_recv_len":2000000}`, "probe_recv_len"},
		{"probe", `{"interval":"2s","probe_protocol":"udp","probe_recv":"x"}`, "probe_send"},
		{"probe", `{"interval":"2s","probe_protocol":"udp","probe_send":"x"}`, "probe_recv"},
		{"probe", `{"interval":"2s","probe_protocol":"tls"}`, ""},
		{"probe", `{"probe_protocol":"tls"}`, "interval"},

		{"exec", `{"interval":"2s","exec_command":["/bin/check","-q"]}`, ""},
		{"exec", `{"interval":"2s"}`, "exec_command"},
		{"exec", `{"interval":"2s","exec_command":[""]}`, "exec_command"},
		{"exec", `{"interval":"2s","exec_command":"/bin/check"}`, "exec_command"}, // not a list
		{"exec", `{"interval":"2s","exec_command":["c"],"exec_expected_positive_output":"0"}`, "exec_expected_negative_output"},
		{"exec", `{"interval":"2s","exec_command":["c"],"exec_expected_positive_output":"ok\n"}`, "exec_expected_positive_output"},
		{"exec", `{"interval":"2s","exec_command":["c"],"exec_expected_negative_output":"bad "}`, "exec_expected_negative_output"},
		{"exec", `{"interval":"2s","exec_command":["c"],"exec_expected_positive_output":"ok","exec_expected_negative_output":"ok"}`, "exec_expected_negative_output"},

		{"http", `{"interval":"2s","http_path":"/healthz?x=1","http_scheme":"https","http_host":"api.internal:8443","http_expected_status":[200,204]}`, ""},
		{"http", `{"interval":"2s","http_path":"healthz"}`, "http_path"},
		{"http", `{"interval":"2s","http_scheme":"ftp"}`, "http_scheme"},
		{"http", `{"interval":"2s","http_host":"a b"}`, "http_host"},
		{"http", `{"interval":"2s","http_expected_status":[200,99]}`, "http_expected_status[1]"},
		{"http", `{"interval":"2s","http_expected_status":[600]}`, "http_expected_status[0]"},
	}
	for i, tt := range tests {
		t.Run(tt.kind+strconv.Itoa(i), func(t *testing.T) {
			_, err := load(t, tt.kind, tt.json)
			checkErr(t, err, tt.wantErr)
		})
	}
}

func TestCheckProtocol(t *testing.T) {
	for _, tt := range []struct {
		kind, proto string
		wantErr     bool
	}{
		{"ping", "tcp", false},
		{"ping", "tls", false},
		{"ping", "udp", true},
		{"probe", "udp", false},
		{"exec", "udp", false},
		{"http", "udp", false},
	} {
		err := CheckProtocol(tt.kind, tt.proto)
		if (err != nil) != tt.wantErr {
			t.Errorf("CheckProtocol(%q, %q) = %v", tt.kind, tt.proto, err)
		}
		if err != nil && !strings.Contains(err.Error(), "UDP") {
			t.Errorf("error %q does not explain", err)
		}
	}
	var p Ping
	var v ProtocolValidator = &p
	if v.ValidateProtocol("udp") == nil || v.ValidateProtocol("tcp") != nil {
		t.Error("Ping.ValidateProtocol does not reject udp only")
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		kind, input, want string
		wantErr           string
	}{
		{"ping", `ping {
			interval 2s
			timeout 500ms
			fails 3
			passes 2
			initial_status unhealthy
			port 8080
		}`, `{"interval":2000000000,"timeout":500000000,"fails":3,"passes":2,"initial_status":"unhealthy","port":8080}`, ""},
		{"ping", `ping`, `{}`, ""},
		{"probe", `probe {
			interval 1s
			protocol tcp
			send "PING\r\n"
			recv +PONG
			recv_len 64
			strategy starts_with
		}`, `{"interval":1000000000,"probe_protocol":"tcp","probe_send":"PING\\r\\n","probe_recv":"+PONG","probe_recv_len":64,"probe_strategy":"starts_with"}`, ""},
		{"probe", `probe {
			probe_protocol udp
			probe_send "\x00\x01"
			probe_recv "^\d+"
			probe_strategy regexp
		}`, `{"probe_protocol":"udp","probe_send":"\\x00\\x01","probe_recv":"^\\d+","probe_strategy":"regexp"}`, ""},
		{"exec", `exec {
			interval 5s
			command /usr/local/bin/check --quiet "two words"
			expected_positive_output ok
			expected_negative_output fail
		}`, `{"interval":5000000000,"exec_command":["/usr/local/bin/check","--quiet","two words"],"exec_expected_positive_output":"ok","exec_expected_negative_output":"fail"}`, ""},
		{"http", `http {
			interval 2s
			path /healthz
			scheme https
			host api.internal
			expected_status 200 204
		}`, `{"interval":2000000000,"http_path":"/healthz","http_scheme":"https","http_host":"api.internal","http_expected_status":[200,204]}`, ""},

		{"ping", `ping extra`, "", "wrong argument count"},
		{"ping", "ping {\n\tinterval\n}", "", "wrong argument count"},
		{"ping", "ping {\n\tinterval 2s 3s\n}", "", "wrong argument count"},
		{"ping", "ping {\n\tinterval soon\n}", "", `interval "soon"`},
		{"ping", "ping {\n\tfails many\n}", "", `fails "many"`},
		{"ping", "ping {\n\tsend x\n}", "", `unknown healthcheck subdirective "send"`},
		{"probe", "probe {\n\trecv_len big\n}", "", `recv_len "big"`},
		{"probe", "probe {\n\trecv_len 1 2\n}", "", "wrong argument count"},
		{"ping", "ping {\n\tport\n}", "", "wrong argument count"},
		{"ping", "ping {\n\tinitial_status healthy sick\n}", "", "wrong argument count"},
		{"exec", "exec {\n\tcommand\n}", "", "wrong argument count"},
		{"http", "http {\n\texpected_status ok\n}", "", `expected_status "ok"`},
		{"http", "http {\n\tpath /a /b\n}", "", "wrong argument count"},
	}
	for i, tt := range tests {
		t.Run(tt.kind+strconv.Itoa(i), func(t *testing.T) {
			info, err := caddy.GetModule("between.healthchecks." + tt.kind)
			if err != nil {
				t.Fatal(err)
			}
			mod := info.New()
			err = mod.(caddyfile.Unmarshaler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			checkErr(t, err, tt.wantErr)
			if err != nil {
				return
			}
			got, err := json.Marshal(mod)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, []byte(tt.want)) {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// TestCaddyfileBinaryProbe checks that Go escapes survive the Caddyfile lexer
// (which keeps backslashes inside quotes) and reach the wire as bytes.
func TestCaddyfileBinaryProbe(t *testing.T) {
	var p Probe
	in := "probe {\n\tinterval 5s\n\tprotocol udp\n\tsend \"" + dnsQuery + "\"\n\trecv \"\\xbe\\xef\\x85\\x80\"\n}"
	if err := p.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	if err := p.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	want := "\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x04test\x00\x00\x01\x00\x01"
	if string(p.send) != want || string(p.recv) != "\xbe\xef\x85\x80" {
		t.Fatalf("send %q recv %q", p.send, p.recv)
	}
}
