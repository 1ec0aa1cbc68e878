import test_http_api as t
from conftest import mint
def test_show(server, fleet):
    tok = mint("vehicle", "bus-1", fleet)
    for name, body, field in t._bad_location_bodies():
        r = t.put_location(server.url, fleet, "bus-1", tok, body)
        print(name, "|", field, "|", r.json()["error"]["message"])
    d = mint("dispatcher","d",fleet)
    for b in ["1,2,3","nan,0,1,1","0,10,10,5"]:
        print(b, t.call(server.url,"GET",f"/api/v1/fleets/{fleet}/vehicles",d,params={"bbox":b}).json())
    print(t.call(server.url,"GET",f"/api/v1/fleets/{fleet}/vehicles/bad%20id",d).json())
    print(t.call(server.url,"POST",f"/api/v1/fleets/{fleet}/rooms/a%2Fb/messages",d,{"text":"x"}).json())
    print(t.call(server.url,"POST",f"/api/v1/fleets/{fleet}/locations",d,{}).json())
    print(t.call(server.url,"POST",f"/api/v1/fleets/{fleet}/locations",d,{"items":[{"lat":1,"lon":1},"x",{"vehicleId":"bad id","lat":1,"lon":1}]}).json())
    print(t.call(server.url,"PUT",f"/api/v1/fleets/{fleet}/vehicles/bus-1/location",tok,raw="").json())
    print(t.call(server.url,"PUT",f"/api/v1/fleets/{fleet}/vehicles/bus-1/location",tok).status_code, "no body no ctype")
