package discovery

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestStaticProvision(t *testing.T) {
	for _, tt := range []struct {
		name    string
		list    []string
		want    string   // ports of the parsed list when valid
		mention []string // error text parts when invalid
	}{
		{"valid", []string{"127.0.0.1:3001", "127.0.0.1:3002 weight=2"}, "3001,3002", nil},
		{"bad second line", []string{"127.0.0.1:3001", "127.0.0.1:0"}, "", []string{"static_list[1]", "127.0.0.1:0"}},
		{"bad attribute", []string{"127.0.0.1:3001", "127.0.0.1:3002 weight=x"}, "", []string{"static_list[1]", "weight"}},
		{"empty line", []string{"127.0.0.1:3001", ""}, "", []string{"static_list[1]", "empty"}},
		{"duplicate", []string{"127.0.0.1:3001", "127.0.0.1:3001 weight=5"}, "", []string{"static_list[1]", "127.0.0.1:3001", "twice"}},
		{"duplicate after normalising", []string{"127.0.0.1:80", "127.0.0.1:080"}, "", []string{"static_list[1]", "twice"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := &Static{StaticList: tt.list}
			err := s.Provision(caddy.Context{})
			if tt.mention == nil {
				if err != nil {
					t.Fatal(err)
				}
				got, err := s.Fetch(context.Background())
				if err != nil || ports(got) != tt.want {
					t.Fatalf("Fetch = %v, %v; want ports %s", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Provision(%q) succeeded, want an error", tt.list)
			}
			for _, m := range tt.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
}

func TestStaticFetchReturnsCopies(t *testing.T) {
	s := &Static{StaticList: []string{"127.0.0.1:3001 weight=3"}}
	if err := s.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	// Provisioning again (as on a reload) must not duplicate the list.
	if err := s.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	a, _ := s.Fetch(context.Background())
	if len(a) != 1 || a[0].Weight != 3 {
		t.Fatalf("Fetch = %+v", a)
	}
	a[0].Weight = 99
	b, _ := s.Fetch(context.Background())
	if b[0].Weight != 3 {
		t.Fatal("changing one Fetch result changed the next")
	}
}

func TestStaticValidate(t *testing.T) {
	for _, tt := range []struct {
		name    string
		s       Static
		mention string
	}{
		{"ok", Static{StaticList: []string{"127.0.0.1:1"}}, ""},
		{"empty list", Static{}, "static_list"},
		{"bad failpolicy", Static{StaticList: []string{"127.0.0.1:1"}, Common: Common{FailPolicy: "drop"}}, "failpolicy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantErrNaming(t, "Validate()", tt.s.Validate(), tt.mention)
		})
	}
}

func TestStaticJSON(t *testing.T) {
	var s Static
	in := `{"static_list":["127.0.0.1:3001","127.0.0.1:3002 weight=2"],"interval":"10s","timeout":"2s","failpolicy":"setempty"}`
	if err := json.Unmarshal([]byte(in), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.StaticList) != 2 || s.Interval != caddy.Duration(10*time.Second) ||
		s.Timeout != caddy.Duration(2*time.Second) || s.FailPolicy != "setempty" {
		t.Fatalf("unmarshalled %+v", s)
	}
	out, err := json.Marshal(Static{StaticList: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"static_list":["127.0.0.1:1"]}` {
		t.Fatalf("defaults marshal to %s, want only static_list", out)
	}
}

func TestStaticCaddyfile(t *testing.T) {
	runCaddyfileCases(t, []caddyfileCase[Static]{
		{"inline", `static 127.0.0.1:3001 127.0.0.1:3002`,
			Static{StaticList: []string{"127.0.0.1:3001", "127.0.0.1:3002"}}, ""},
		{"block", `static {
				list "127.0.0.1:3001 weight=2" 127.0.0.1:3002
				list "127.0.0.1:3003 priority=2"
				interval 30s
				timeout 2s
				failpolicy setempty
			}`,
			Static{StaticList: []string{"127.0.0.1:3001 weight=2", "127.0.0.1:3002", "127.0.0.1:3003 priority=2"},
				Common: Common{Interval: caddy.Duration(30 * time.Second), Timeout: caddy.Duration(2 * time.Second), FailPolicy: "setempty"}}, ""},
		{"inline and block", `static 127.0.0.1:3001 {
				static_list 127.0.0.1:3002
			}`,
			Static{StaticList: []string{"127.0.0.1:3001", "127.0.0.1:3002"}}, ""},
		{"list without args", "static {\n list\n}", Static{}, "argument"},
		{"bad interval", "static 127.0.0.1:1 {\n interval soon\n}", Static{}, "interval"},
		{"extra arg", "static 127.0.0.1:1 {\n timeout 1s 2s\n}", Static{}, "argument"},
		{"timeout without arg", "static 127.0.0.1:1 {\n timeout\n}", Static{}, "argument"},
		{"failpolicy extra arg", "static 127.0.0.1:1 {\n failpolicy setempty now\n}", Static{}, "argument"},
		{"unknown", "static 127.0.0.1:1 {\n colour red\n}", Static{}, "colour"},
	}, func(got, want *Static) bool {
		return strings.Join(got.StaticList, "|") == strings.Join(want.StaticList, "|") && got.Common == want.Common
	})
}

// The static source through the Runner: one fetch, then Run ends (interval 0).
func TestStaticWithRunner(t *testing.T) {
	s := &Static{StaticList: []string{"127.0.0.1:3001", "[::1]:3002 weight=2"}}
	if err := s.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	rec := newRecord()
	done := rec.run(t, context.Background(), s)
	got := recv(t, rec.updates, time.Second, "update")
	if len(got) != 2 || got[1].Address() != "[::1]:3002" || got[1].Weight != 2 {
		t.Fatalf("update = %+v", got)
	}
	recv(t, done, time.Second, "Run return")
}
