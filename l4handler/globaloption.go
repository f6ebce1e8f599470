package l4handler

import (
	"encoding/json"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("between", parseGlobalOption)
}

// parseGlobalOption reads the `between` global option, which configures the
// companion app (apps.between):
//
//	{
//		between {
//			acme_hosts NAME...
//		}
//	}
//
// acme_hosts may be repeated; the names add up. Two `between` blocks merge.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(App)
	if prev, ok := existing.(httpcaddyfile.App); ok {
		if err := json.Unmarshal(prev.Value, app); err != nil {
			return nil, err
		}
	}
	for d.Next() {
		if d.NextArg() {
			return nil, d.ArgErr()
		}
		for d.NextBlock(0) {
			switch d.Val() {
			case "acme_hosts":
				names := d.RemainingArgs()
				if len(names) == 0 {
					return nil, d.Errf("acme_hosts: at least one name is required")
				}
				app.ACMEHosts = append(app.ACMEHosts, names...)
			default:
				return nil, d.Errf("between global option: unknown subdirective %q", d.Val())
			}
		}
	}
	if err := checkACMEHosts(app.ACMEHosts); err != nil {
		return nil, d.Errf("between global option: %v", err)
	}
	raw, err := json.Marshal(app)
	if err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "between", Value: raw}, nil
}
