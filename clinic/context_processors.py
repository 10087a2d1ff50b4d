from django.http import HttpRequest

from clinic.roles import is_admin, is_reviewer


def roles(request: HttpRequest) -> dict[str, bool]:
    user = request.user
    return {"user_is_reviewer": is_reviewer(user), "user_is_admin": is_admin(user)}
