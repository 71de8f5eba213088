package accounts

import "testing"

// TestShape pins the generated accounts to the shape of the root
// package's benchConfigJSON: IDs in sorted order, three rules each.
func TestShape(t *testing.T) {
	const want = `{"accounts":{` +
		`"account-0":[{"origin":"https://app0.example.com","methods":["GET","POST","DELETE"]},` +
		`{"origin":"https://admin0.example.org:8443","methods":["GET"]},` +
		`{"origin":"http://dev0.example.net:8080","methods":["GET","POST"]}],` +
		`"account-1":[{"origin":"https://app1.example.com","methods":["GET","POST","DELETE"]},` +
		`{"origin":"https://admin1.example.org:8443","methods":["GET"]},` +
		`{"origin":"http://dev1.example.net:8080","methods":["GET","POST"]}],` +
		`"account-10":[{"origin":"https://app10.example.com","methods":["GET","POST","DELETE"]},` +
		`{"origin":"https://admin10.example.org:8443","methods":["GET"]},` +
		`{"origin":"http://dev10.example.net:8080","methods":["GET","POST"]}],` +
		`"account-2":[`
	got := string(HandlerJSON(11))
	if len(got) < len(want) || got[:len(want)] != want {
		t.Errorf("HandlerJSON(11) starts\n%.600s\nwant\n%s", got, want)
	}

	const wantCaddyfile = "\tatomsphere_cors {\n" +
		"\t\taccount account-0 {\n" +
		"\t\t\torigin https://app0.example.com GET POST DELETE\n" +
		"\t\t\torigin https://admin0.example.org:8443 GET\n" +
		"\t\t\torigin http://dev0.example.net:8080 GET POST\n" +
		"\t\t}\n" +
		"\t}\n"
	if got := Caddyfile(1, "\t"); got != wantCaddyfile {
		t.Errorf("Caddyfile(1) =\n%s\nwant\n%s", got, wantCaddyfile)
	}
}
