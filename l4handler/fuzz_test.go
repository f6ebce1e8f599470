package l4handler

import (
	"encoding/json"
	"testing"
)

// FuzzHandlerConfig: no JSON input makes decoding or provisioning panic; what
// decodes either validates inside a layer4 route or fails with an error.
func FuzzHandlerConfig(f *testing.F) {
	for _, seed := range []string{
		`{"name":"a","discovery":{"kind":"static","static_list":["127.0.0.1:2 weight=2"]}}`,
		`{"balance":{"policy":"iphash1","use_port":true},"discovery":{"kind":"static","static_list":["[::1]:2"]},"sni":{"hostname_matching_strategy":"regexp"}}`,
		`{"access":{"default":"deny","rules":["allow ::ffff:1.2.3.4/120"]},"discovery":{"kind":"static","static_list":["h:1"]},"healthcheck":{"kind":"probe","interval":"1s","probe_send":"\\x00"}}`,
		`{"client_idle_timeout":"1d","retries":-1}`,
		`{"name":""}`,
		`[]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var h Handler
		if err := json.Unmarshal(data, &h); err != nil {
			return
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(data, &m) != nil {
			return
		}
		m["handler"] = json.RawMessage(`"between"`)
		raw, _ := json.Marshal(m)
		validate(t, config(map[string]string{"f": server("127.0.0.1:40001", string(raw))}))
	})
}
