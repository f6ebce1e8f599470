package l4handler

import (
	"encoding/json"
	"testing"
)

// FuzzAppConfig: no JSON input makes decoding or provisioning panic; what
// decodes either provisions or fails with an error.
func FuzzAppConfig(f *testing.F) {
	for _, seed := range []string{
		`{"servers":{"a":{"listen":["127.0.0.1:1"],"discovery":{"kind":"static","static_list":["127.0.0.1:2 weight=2"]}}}}`,
		`{"servers":{"a":{"listen":["127.0.0.1:1-3"],"balance":{"policy":"iphash1","use_port":true},"discovery":{"kind":"static","static_list":["[::1]:2"]},"sni":{"hostname_matching_strategy":"regexp"}}}}`,
		`{"servers":{"a":{"listen":["unix//tmp/x"],"access":{"default":"deny","rules":["allow ::ffff:1.2.3.4/120"]},"discovery":{"kind":"static","static_list":["h:1"]},"healthcheck":{"kind":"probe","interval":"1s","probe_send":"\\x00"}}}}`,
		`{"servers":{"a":{"client_idle_timeout":"1d","retries":-1}}}`,
		`{"servers":{"":{}}}`,
		`[]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var a App
		if err := json.Unmarshal(data, &a); err != nil {
			return
		}
		if err := a.Provision(newTestContext(t)); err == nil {
			if len(a.Servers) == 0 {
				return
			}
			for name, s := range a.Servers {
				if s.balancer == nil || s.source == nil || s.state == nil {
					t.Fatalf("server %q provisioned without balancer, discovery or state", name)
				}
			}
		}
		a.Cleanup()
	})
}
