package sharedstorage

import (
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestUnmarshalCaddyfile: the storage global option's block fills the same
// fields as the JSON.
func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		m    caddyfile.Unmarshaler
		in   string
		want string
	}{
		{new(Etcd), `between_etcd 127.0.0.1:2379 {
			endpoints https://10.0.0.2:2379
			username caddy
			password {env.ETCD_PASSWORD}
			prefix fleet/
			dial_timeout 3s
			timeout 8s
			lock_ttl 20s
			tls {
				cacert_path /ca.pem
				cert_path /c.pem
				key_path /k.pem
				server_name etcd.internal
				insecure_skip_verify
			}
		}`, `{"endpoints":["127.0.0.1:2379","https://10.0.0.2:2379"],"username":"caddy","password":"{env.ETCD_PASSWORD}",` +
			`"tls":{"cacert_path":"/ca.pem","cert_path":"/c.pem","key_path":"/k.pem","insecure_skip_verify":true,"server_name":"etcd.internal"},` +
			`"prefix":"fleet/","dial_timeout":3000000000,"timeout":8000000000,"lock_ttl":20000000000}`},
		{new(Consul), `between_consul 127.0.0.1:8500 {
			scheme https
			token {env.CONSUL_TOKEN}
			datacenter dc2
			prefix fleet/
			timeout 8s
			lock_ttl 30s
			tls {
				cacert_path /ca.pem
			}
		}`, `{"address":"127.0.0.1:8500","scheme":"https","token":"{env.CONSUL_TOKEN}","datacenter":"dc2",` +
			`"tls":{"cacert_path":"/ca.pem"},"prefix":"fleet/","timeout":8000000000,"lock_ttl":30000000000}`},
	} {
		if err := tc.m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in)); err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		got, _ := json.Marshal(tc.m)
		if string(got) != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
	for _, bad := range []string{"between_etcd {\n unknown x\n}", "between_etcd {\n lock_ttl soon\n}", "between_etcd {\n tls {\n bogus\n }\n}"} {
		if err := new(Etcd).UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if err := new(Consul).UnmarshalCaddyfile(caddyfile.NewTestDispenser("between_consul a b")); err == nil {
		t.Error("two addresses: no error")
	}
}
