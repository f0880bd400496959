"""Object functions: create, copy, destroy, size, attributes, search."""

from . import precheck
from .handlers_common import handler
from .marshal import attribute_types, need, read_template, write_attributes


@handler("C_CreateObject")
def create_object(library, session, p_template, count, ph_object):
    need(ph_object)
    precheck.session(library, session)
    ph_object[0] = library.create_object(session, read_template(p_template, count, library.config.limits))


@handler("C_CopyObject")
def copy_object(library, session, obj, p_template, count, ph_new):
    need(ph_new)
    precheck.session(library, session)
    ph_new[0] = library.copy_object(session, obj, read_template(p_template, count, library.config.limits))


@handler("C_DestroyObject")
def destroy_object(library, session, obj):
    library.destroy_object(session, obj)


@handler("C_GetObjectSize")
def get_object_size(library, session, obj, pul_size):
    need(pul_size)
    pul_size[0] = library.get_object_size(session, obj)


@handler("C_GetAttributeValue")
def get_attribute_value(library, session, obj, p_template, count):
    precheck.session(library, session)
    types = attribute_types(p_template, count, library.config.limits)
    return write_attributes(p_template, library.get_attribute_value(session, obj, types))


@handler("C_SetAttributeValue")
def set_attribute_value(library, session, obj, p_template, count):
    precheck.session(library, session)
    library.set_attribute_value(session, obj, read_template(p_template, count, library.config.limits))


@handler("C_FindObjectsInit")
def find_objects_init(library, session, p_template, count):
    precheck.session(library, session)
    library.find_objects_init(session, read_template(p_template, count, library.config.limits))


@handler("C_FindObjects")
def find_objects(library, session, ph_objects, max_count, pul_count):
    need(pul_count)
    if max_count:
        need(ph_objects)
    found = library.find_objects(session, max_count)
    for i, h in enumerate(found):
        ph_objects[i] = h
    pul_count[0] = len(found)


@handler("C_FindObjectsFinal")
def find_objects_final(library, session):
    library.find_objects_final(session)
